-- wrk script: POST one AdmissionReview (the file named after `--`) on every request, and print the
-- results as one JSON line for bench/run.py. Latencies are in microseconds.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

function init(args)
  if args[1] then
    local file = assert(io.open(args[1], "rb"))
    wrk.body = file:read("*a")
    file:close()
  else
    wrk.method = "GET"
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "errors": %d, "non_2xx": %d, ' ..
    '"p50": %d, "p90": %d, "p99": %d, "max": %d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
