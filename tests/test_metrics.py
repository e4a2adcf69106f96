"""What the in-cluster mode tells the metrics about its certificates, which the alerts of deploy/monitoring
page on: expiry, the start of the renewal window, and whether the caBundle trusts what is served."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

from webhook import cluster_certs
from webhook.app import ServingState, create_app
from webhook.cluster import ClusterCertificates
from webhook.metrics import Metrics
from webhook.settings import Settings


def keeper(tmp_path: Path) -> ClusterCertificates:
    settings = Settings.model_validate({"certificates": "cluster", "cert_dir": tmp_path / "served"})
    return ClusterCertificates(settings, ServingState(), Metrics())


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_serving_a_trusted_certificate_exports_its_expiry_its_renewal_time_and_trust(tmp_path: Path) -> None:
    replica, now = keeper(tmp_path), datetime.now(UTC)
    material = cluster_certs.fresh(replica.hosts, replica.validity, [], now).material
    replica._serve(material, material.bundle(), now)
    metrics = replica.metrics
    assert sample(metrics, "sidecar_webhook_ca_bundle_trusts_certificate", certificate="serving") == 1.0
    for name, cert, renew_before in [
        ("serving", material.serving.cert, timedelta(days=30)),
        ("ca", material.ca.cert, timedelta(days=243)),
    ]:
        expiry = cert.not_valid_after_utc
        assert sample(metrics, "sidecar_webhook_certificate_expiry_timestamp_seconds", certificate=name) == (
            expiry.timestamp()
        )
        renewal = sample(metrics, "sidecar_webhook_certificate_renewal_timestamp_seconds", certificate=name)
        assert renewal == (expiry - renew_before).timestamp()


def test_a_ca_bundle_that_stops_trusting_the_served_certificate_shows_as_0(tmp_path: Path) -> None:
    replica, now = keeper(tmp_path), datetime.now(UTC)
    material = cluster_certs.fresh(replica.hosts, replica.validity, [], now).material
    replica._serve(material, material.bundle(), now)
    stranger = cluster_certs.fresh(replica.hosts, replica.validity, [], now).material
    replica._serve(material, stranger.bundle(), now)
    assert (
        sample(replica.metrics, "sidecar_webhook_ca_bundle_trusts_certificate", certificate="serving") == 0.0
    )
    assert replica.state.ready is False


def test_the_ready_metric_follows_readiness_at_each_scrape() -> None:
    state, metrics = ServingState(), Metrics()
    create_app(Settings.model_validate({}), state, metrics)
    assert sample(metrics, "sidecar_webhook_ready") == 0.0
    state.ready = True
    assert sample(metrics, "sidecar_webhook_ready") == 1.0
    state.draining = True
    assert sample(metrics, "sidecar_webhook_ready") == 0.0


def test_the_file_mode_reports_no_ca_bundle_trust_at_all() -> None:
    # It never reads the caBundle: no sample, so the caBundle alert has nothing to fire on.
    metrics = Metrics()
    create_app(Settings.model_validate({}), ServingState(ready=True), metrics)
    assert b"sidecar_webhook_ca_bundle_trusts_certificate{" not in metrics.render()
