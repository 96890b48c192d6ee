-- Shared by the wrk scripts of scripts/bench: writes one JSON object with wrk's counts and
-- latency percentiles (microseconds) to the file named by BENCH_OUT.
--
-- `window_us` is the time the requests really took: wrk's own duration, or, when every
-- thread stopped early because its token slice ran out (rotate.lua), from the first request
-- to the last response.

local M = {}

function M.write(summary, latency, threads)
  local window = summary.duration
  if threads and #threads > 0 then
    local first, last, all_stopped = nil, nil, true
    for _, t in ipairs(threads) do
      local s, e = t:get("t_start"), t:get("t_end")
      if not e then all_stopped = false end
      if s and (not first or s < first) then first = s end
      if e and (not last or e > last) then last = e end
    end
    if all_stopped and first and last and last > first then window = last - first end
  end
  local e = summary.errors
  local out = assert(io.open(assert(os.getenv("BENCH_OUT"), "BENCH_OUT is not set"), "w"))
  out:write(string.format(
    '{"requests":%d,"duration_us":%d,"window_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.1f,"max":%d,"stdev":%.1f,"p50":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
    summary.requests, summary.duration, window, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.max, latency.stdev,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9)))
  out:close()
end

return M
