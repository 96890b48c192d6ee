-- wrk script for the distinct-token scenarios (signature path, login storm, memory fill).
--
-- Each wrk thread reads its own slice of the token file (BENCH_TOKENS .. "." .. NN, split by
-- the script) and sends each token once, as `Authorization: Bearer`, with the other headers
-- of the command line (-H). When its slice is used up the thread records the time, writes
-- BENCH_OUT .. ".done." .. NN and stops; the script then interrupts wrk (SIGINT), so the run
-- ends when the tokens do and `window_us` (report.lua) is the time they really took.
-- Once a thread has sent its last token, the requests its other connections still make go
-- without a token (anonymous: no login, no signature check) until its last answer is in.
package.path = os.getenv("BENCH_LUA_DIR") .. "/?.lua;" .. package.path
local report = require("report")
local ffi = require("ffi")
ffi.cdef[[
  typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
  int clock_gettime(int clk_id, bench_timespec *tp);
]]

local threads = {}
local next_id = 0

function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

local clock = ffi.new("bench_timespec")
local function now_us()
  ffi.C.clock_gettime(1, clock) -- CLOCK_MONOTONIC
  return tonumber(clock.tv_sec) * 1000000 + math.floor(tonumber(clock.tv_nsec) / 1000)
end

local tokens, count, sent, answered = {}, 0, 0, 0
local headers = {}

function init(args)
  local part = string.format("%s.%02d", os.getenv("BENCH_TOKENS"), tid)
  for line in io.lines(part) do
    if #line > 0 then
      count = count + 1
      tokens[count] = line
    end
  end
  for name, value in pairs(wrk.headers) do headers[name] = value end
end

function request()
  if t_start == nil then t_start = now_us() end
  if sent < count then
    sent = sent + 1
    headers["Authorization"] = "Bearer " .. tokens[sent]
  else
    headers["Authorization"] = nil
  end
  return wrk.format(nil, nil, headers)
end

function response(status, hdrs, body)
  answered = answered + 1
  if answered == count then
    t_end = now_us()
    local marker = io.open(string.format("%s.done.%02d", os.getenv("BENCH_OUT"), tid), "w")
    if marker then marker:close() end
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  report.write(summary, latency, threads)
end
