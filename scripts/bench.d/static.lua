-- wrk script for fixed requests (baselines and cached logins): the request is built once from
-- the command line (-H headers), so wrk stays on its fast path; only the summary is scripted.
package.path = os.getenv("BENCH_LUA_DIR") .. "/?.lua;" .. package.path
local report = require("report")

function done(summary, latency, requests)
  report.write(summary, latency, nil)
end
