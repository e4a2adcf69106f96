"""The rules of webhook/cluster_certs.py, step by step on a clock the test moves: a year in a second.
(tests/test_cluster_certs.py runs them against a real API server.)"""

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from webhook import cluster_certs, pki
from webhook.cluster_certs import Material, Validity
from webhook.settings import Settings

HOSTS = ["sidecar-webhook.sidecar-webhook.svc", "127.0.0.1"]
DAY = timedelta(days=1)
VALIDITY = Validity(ca=720 * DAY, ca_renew_before=240 * DAY, serving=90 * DAY, serving_renew_before=30 * DAY)
START = datetime(2030, 1, 1, tzinfo=UTC)


def start() -> Material:
    return cluster_certs.fresh(HOSTS, VALIDITY, [], START).material


def advance(material: Material, now: datetime, published: list[object] | None = None) -> cluster_certs.Step:
    trusted = material.bundle() if published is None else published
    return cluster_certs.advance(material, trusted, HOSTS, VALIDITY, now)  # type: ignore[arg-type]


def test_a_fresh_start_is_one_ca_and_a_certificate_it_signed_for_the_hosts() -> None:
    step = cluster_certs.fresh(HOSTS, VALIDITY, [], START)
    material = step.material
    assert material.bundle() == [material.ca.cert]
    material.serving.cert.verify_directly_issued_by(material.ca.cert)
    assert sorted(pki.hosts_of(material.serving.cert)) == sorted(HOSTS)
    assert [what for what, _ in step.changes] == ["ca", "serving"]


def test_a_fresh_start_keeps_the_cas_already_trusted_for_one_serving_validity() -> None:
    # An install in the file mode being upgraded: its replicas serve certificates of its CA meanwhile.
    old = pki.create_ca("old", 3650 * DAY, START)
    material = cluster_certs.fresh(HOSTS, VALIDITY, [old.cert], START).material
    assert material.bundle() == [material.ca.cert, old.cert]
    later = advance(material, START + VALIDITY.serving + timedelta(seconds=1)).material
    assert old.cert not in later.bundle()


def test_nothing_changes_while_nothing_is_due() -> None:
    material = start()
    assert advance(material, START + 59 * DAY).changes == ()


def test_the_serving_certificate_is_reissued_in_its_renewal_window_by_the_same_ca() -> None:
    material = start()
    step = advance(material, START + 61 * DAY)
    assert [what for what, _ in step.changes] == ["serving"]
    assert step.material.serving.cert != material.serving.cert
    assert step.material.ca == material.ca
    step.material.serving.cert.verify_directly_issued_by(material.ca.cert)


def test_the_serving_certificate_is_reissued_when_the_hosts_change() -> None:
    material = start()
    step = cluster_certs.advance(material, material.bundle(), [*HOSTS, "extra"], VALIDITY, START + DAY)
    assert "extra" in pki.hosts_of(step.material.serving.cert)
    assert any("the hosts changed" in line for _, line in step.changes)


def test_a_ca_rotation_adds_first_switches_once_trusted_and_retires_after_the_last_certificate() -> None:
    material = start()
    old_ca = material.ca
    renewal = START + VALIDITY.ca - VALIDITY.ca_renew_before + DAY
    # Keep the serving certificate current up to the CA's renewal window, as the server would.
    now = START
    while now < renewal:
        material = advance(material, now).material
        now += 10 * DAY
    last_of_old = material.serving

    # 1. The next CA joins the bundle; nothing is signed by it yet.
    added = advance(material, renewal, published=[old_ca.cert]).material
    assert added.next_ca is not None
    assert added.bundle() == [old_ca.cert, added.next_ca.cert]
    assert added.ca == old_ca and added.serving == last_of_old

    # 2. Not yet in the configuration's caBundle: the old CA keeps signing.
    assert advance(added, renewal + DAY, published=[old_ca.cert]).material.ca == old_ca

    # 3. Trusted by the configuration: it signs, and the old CA stays in the bundle, retired.
    switched = advance(added, renewal + DAY, published=added.bundle()).material
    assert switched.ca == added.next_ca and switched.next_ca is None
    switched.serving.cert.verify_directly_issued_by(switched.ca.cert)
    (retired,) = switched.retired
    assert retired.cert == old_ca.cert
    assert retired.until == last_of_old.cert.not_valid_after_utc

    # 4. It leaves the bundle once the last certificate it signed has expired, not before.
    assert old_ca.cert in advance(switched, retired.until - timedelta(seconds=1)).material.bundle()
    assert advance(switched, retired.until).material.bundle() == [switched.ca.cert]


def test_a_serving_certificate_never_outlives_its_ca_and_is_not_reissued_for_nothing() -> None:
    material = start()
    near_end = START + VALIDITY.ca - 10 * DAY
    # The next CA is never trusted (say the caBundle cannot be written): the old one signs to the end.
    step = advance(material, near_end, published=[material.ca.cert])
    assert step.material.serving.cert.not_valid_after_utc == material.ca.cert.not_valid_after_utc
    again = advance(step.material, near_end + DAY, published=[material.ca.cert])
    assert [what for what, _ in again.changes] == []


# Changed by design (issue 18): a CA newer than any this replica knows used to stay in the caBundle, so a
# CA anyone wrote there stayed trusted for good. A replica whose Secret is a moment old now reads the
# Secret again before dropping a CA (webhook/cluster.py), which tests/test_rights.py runs.
def test_a_ca_the_secret_does_not_hold_is_foreign_however_new() -> None:
    material = start()
    newer = pki.create_ca("sidecar-webhook CA", VALIDITY.ca, START + DAY)
    older = pki.create_ca("sidecar-webhook CA", VALIDITY.ca, START - DAY)
    present = [material.ca.cert, newer.cert, older.cert, newer.cert]
    assert cluster_certs.foreign(material, present) == [newer.cert, older.cert]
    assert cluster_certs.foreign(material, [material.ca.cert]) == []


def test_every_ca_of_a_rotation_is_the_webhooks_own() -> None:
    material = start()
    renewal = START + VALIDITY.ca - VALIDITY.ca_renew_before
    added = advance(material, renewal, published=[material.ca.cert]).material
    switched = advance(added, renewal, published=added.bundle()).material
    assert len(switched.bundle()) == 2, "the new CA signs, the old one is retired"
    for state in (material, added, switched):
        assert cluster_certs.foreign(state, state.bundle()) == []
        assert cluster_certs.foreign(state, material.bundle() + state.bundle()) == []


def test_the_cas_there_at_the_first_start_are_kept_until_they_leave_then_foreign() -> None:
    # The upgrade path: a CA the caBundle held when the Secret was empty is recorded in it, as retired.
    old = pki.create_ca("old", 3650 * DAY, START)
    material = cluster_certs.fresh(HOSTS, VALIDITY, [old.cert], START).material
    assert cluster_certs.foreign(material, [material.ca.cert, old.cert]) == []
    later = advance(material, START + VALIDITY.serving + timedelta(seconds=1)).material
    assert cluster_certs.foreign(later, [later.ca.cert, old.cert]) == [old.cert]


def test_the_secret_data_round_trips_and_corrupt_data_reads_as_none() -> None:
    material = start()
    renewal = START + VALIDITY.ca - VALIDITY.ca_renew_before
    added = advance(material, renewal, published=[material.ca.cert]).material
    switched = advance(added, renewal, published=added.bundle()).material
    for state in (material, added, switched):
        decoded = cluster_certs.decode(cluster_certs.encode(state))
        assert decoded is not None and decoded.bundle() == state.bundle()
        assert decoded.retired == state.retired
        assert cluster_certs.encode(decoded) == cluster_certs.encode(state)
    data = cluster_certs.encode(material)
    assert cluster_certs.decode({**data, "tls.key": data["ca.key"]}) is None  # key of another cert
    assert cluster_certs.decode({k: v for k, v in data.items() if k != "ca.key"}) is None
    assert cluster_certs.decode({**data, "ca.crt": "not base64!"}) is None


def test_trusted_needs_a_valid_certificate_signed_by_a_valid_ca_of_the_bundle() -> None:
    material = start()
    cert, ca = material.serving.cert, material.ca.cert
    assert cluster_certs.trusted(cert, [ca], START)
    assert not cluster_certs.trusted(cert, [], START)
    assert not cluster_certs.trusted(cert, [pki.create_ca("other", DAY, START).cert], START)
    assert not cluster_certs.trusted(cert, [ca], cert.not_valid_after_utc)


def test_settings_take_durations_in_seconds_or_iso_8601() -> None:
    settings = Settings(ca_validity="P400D", ca_renew_before="12000000", serving_validity=86400 * 60)
    assert settings.ca_validity == timedelta(days=400)
    assert settings.ca_renew_before == timedelta(seconds=12_000_000)
    assert settings.serving_validity == timedelta(days=60)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"serving_renew_before": 90 * 86400}, "serving_renew_before must be shorter than serving_validity"),
        ({"ca_renew_before": 800 * 86400}, "ca_renew_before must be shorter than ca_validity"),
        ({"serving_validity": 300 * 86400}, "serving_validity must not be longer than ca_renew_before"),
        ({"check_interval": 0}, "must be longer than 0 seconds"),
    ],
)
def test_settings_refuse_windows_that_cannot_work(values: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(**values)  # type: ignore[arg-type]
