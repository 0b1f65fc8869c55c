"""Load from wrk: one thread, a Lua script written per scenario.

One thread, as in the figures the targets were set with, so that on a small
machine the load generator leaves the other cores to the server.  The script
loads the scenario's files once per thread (in ``init``), picks a target per
request, and reports the summary as one machine-readable line from ``done``.
"""

from __future__ import annotations

import math
import shutil
import subprocess

from .load import EXHAUSTED, LoadResult, Scenario
from .machine import wrk_version

RESULT_TAG = "BENCH-RESULT"
TIMEOUT_S = 60  # per request: a 64 MiB PUT on a slow disk must not count as a timeout

LUA = r"""-- written by bench/wrk.py for scenario %(name)s
local targets_file = %(targets)s
local bodies_file = %(bodies)s
local method = %(method)s
local prefix = %(prefix)s
local random_order = %(random)s
local walk_once = %(walk_once)s
local exhausted = prefix .. %(exhausted)s

local targets, removes, formatted = {}, {}, {}
local n, last = 0, 0
i = %(start)d  -- a global, so that done() can read each thread's with thread:get("i")
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local lengths = {}
  for line in io.lines(targets_file) do
    local t, l, r = line:match("^(%%S+)%%s*(%%d*)%%s*(%%S*)$")
    if t then
      n = n + 1
      targets[n] = prefix .. t
      lengths[n] = tonumber(l) or 0
      if r ~= "" then removes[n] = r end
    end
  end
  if bodies_file ~= "" then
    local f = assert(io.open(bodies_file, "rb"))
    local blob = f:read("*a")
    f:close()
    local offset = 0
    for k = 1, n do
      formatted[k] = wrk.format(method, targets[k], nil, blob:sub(offset + 1, offset + lengths[k]))
      offset = offset + lengths[k]
    end
  end
  math.randomseed(12345)
end

function request()
  if walk_once then
    if i >= n then
      last = 0
      return wrk.format(method, exhausted)
    end
    i = i + 1
  elseif random_order then i = math.random(n) else i = i %% n + 1 end
  last = i
  return formatted[i] or wrk.format(method, targets[i])
end
%(response)s
function done(summary, latency, requests)
  local e = summary.errors
  local walked = 0
  for _, thread in ipairs(threads) do walked = math.max(walked, thread:get("i")) end
  io.write(string.format("%(tag)s %%d %%d %%d %%d %%d %%d %%d %%d %%d %%d %%d\n",
    summary.requests, summary.bytes, summary.duration, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(99), walked))
end
"""

# Only defined when needed: with a response() function wrk parses every response's headers.
LUA_REMOVE = r"""
function response(status, headers, body)
  local r = removes[last]
  if r then os.remove(r) end
end
"""


def _lua_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Wrk:
    name = "wrk"

    def __init__(self) -> None:
        self.exe = shutil.which("wrk") or "wrk"
        self.version = wrk_version()

    def describe(self) -> str:
        return f"{self.version or 'wrk'}, 1 thread"

    def script(self, scenario: Scenario) -> str:
        path = scenario.targets_file + ".lua"
        text = LUA % {
            "name": scenario.name,
            "targets": _lua_string(scenario.targets_file),
            "bodies": _lua_string(scenario.bodies_file or ""),
            "method": _lua_string(scenario.method),
            "prefix": _lua_string(scenario.path_prefix),
            "random": "true" if scenario.random_order else "false",
            "walk_once": "true" if scenario.walk_once else "false",
            "exhausted": _lua_string(EXHAUSTED),
            "start": scenario.start,
            "response": LUA_REMOVE if scenario.removes else "",
            "tag": RESULT_TAG,
        }
        with open(path, "w") as f:
            f.write(text)
        return path

    def run(self, scenario: Scenario, port: int, duration: float) -> LoadResult:
        if scenario.removes and scenario.connections != 1:
            raise ValueError("removing files after responses needs a single connection")
        seconds = max(1, math.ceil(duration))  # wrk takes whole seconds
        argv = [self.exe, "-t1", f"-c{scenario.connections}", f"-d{seconds}s",
                f"--timeout={TIMEOUT_S}s", "-s", self.script(scenario), f"http://127.0.0.1:{port}/"]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + TIMEOUT_S + 60,
                             check=False)
        for line in out.stdout.splitlines():
            if line.startswith(RESULT_TAG):
                n = [int(x) for x in line.split()[1:]]
                return LoadResult(
                    requests=n[0], bytes=n[1], duration_s=n[2] / 1e6, non_2xx=n[6],
                    errors={"connect": n[3], "read": n[4], "write": n[5], "timeout": n[7]},
                    latency_p50_ms=n[8] / 1000, latency_p99_ms=n[9] / 1000, generator=self.name,
                    walked_to=n[10] if scenario.walk_once else None)
        raise RuntimeError(f"wrk gave no result (exit {out.returncode}):\n{out.stdout}\n{out.stderr}")
