-- Tests for health.lua, the Argo CD health check of CommandInvocation and
-- Command.
--
--   lua5.4 deploy/argocd/health_test.lua      (or: bash hack/test-argocd-health.sh)
--
-- Runs health.lua the way Argo CD does (global `obj`, chunk returns the
-- health table) on a set of objects and prints one line per case, then
-- "N passed, M failed". Exits non-zero when a case fails. Works with Lua 5.1
-- (Argo CD's gopher-lua dialect) as well as 5.2+. Also checks that every
-- health key in argocd-cm-snippet.yaml (one per kind) embeds health.lua
-- verbatim.

local dir = (arg and arg[0] and arg[0]:match("^(.*)[/\\]")) or "."

local function read_file(path)
  local f = assert(io.open(path, "r"))
  local s = f:read("*a")
  f:close()
  return s
end

local script_path = dir .. "/health.lua"
local script = read_file(script_path)

-- Run the health script with `obj` as its only extra global.
local function health(obj)
  local env = {
    obj = obj,
    ipairs = ipairs, pairs = pairs, next = next, type = type,
    tostring = tostring, tonumber = tonumber, error = error, pcall = pcall,
    string = string, table = table, math = math,
  }
  local chunk, err
  if setfenv ~= nil then -- Lua 5.1
    chunk, err = loadstring(script, "=health.lua")
    if chunk then setfenv(chunk, env) end
  else -- Lua 5.2+
    chunk, err = load(script, "=health.lua", "t", env)
  end
  if not chunk then error("health.lua does not compile: " .. tostring(err)) end
  return chunk()
end

local passed, failed = 0, 0

local function report(name, ok, detail)
  if ok then
    passed = passed + 1
    print("ok     " .. name)
  else
    failed = failed + 1
    print("FAILED " .. name .. ": " .. tostring(detail))
  end
end

-- Check status and, when given, that the message contains `want_msg`
-- (plain substring) or equals it when `exact` is true.
local function case(name, obj, want_status, want_msg, exact)
  local ok, hs = pcall(health, obj)
  if not ok then
    report(name, false, "error: " .. tostring(hs))
    return
  end
  if type(hs) ~= "table" then
    report(name, false, "returned " .. type(hs) .. ", want a table")
    return
  end
  if hs.status ~= want_status then
    report(name, false, string.format("status %q, want %q (message %q)",
      tostring(hs.status), want_status, tostring(hs.message)))
    return
  end
  if type(hs.message) ~= "string" or hs.message == "" then
    report(name, false, "empty message")
    return
  end
  if want_msg ~= nil then
    local good
    if exact then
      good = hs.message == want_msg
    else
      good = string.find(hs.message, want_msg, 1, true) ~= nil
    end
    if not good then
      report(name, false, string.format("message %q, want %s %q",
        hs.message, exact and "exactly" or "containing", want_msg))
      return
    end
  end
  report(name, true)
end

-- Helpers building CommandInvocation objects.
local function cond(ctype, cstatus, reason, message, gen)
  return {
    type = ctype, status = cstatus, reason = reason, message = message,
    observedGeneration = gen or 1,
    lastTransitionTime = "2025-01-01T00:00:00Z",
  }
end

local function cinv(generation, status)
  return {
    apiVersion = "ssm.operator.dev/v1alpha1",
    kind = "CommandInvocation",
    metadata = { name = "patch-web-1", namespace = "ops", generation = generation },
    spec = {
      commandId = "8f2f6d1e-2b0c-4e4b-9a53-0c7b9f0e1a11",
      instanceId = "i-0123456789abcdef0",
    },
    status = status,
  }
end

local function running(ssm, details, gen)
  gen = gen or 1
  return {
    status = ssm, statusDetails = details or ssm, responseCode = -1,
    observedGeneration = gen,
    conditions = {
      cond("Ready", "False", ssm, "Command is " .. ssm, gen),
      cond("Reconciling", "True", ssm, "SSM reports " .. ssm, gen),
      cond("Stalled", "False", ssm, "", gen),
      cond("Finished", "False", ssm, "", gen),
    },
  }
end

local function succeeded(gen)
  gen = gen or 1
  return {
    status = "Success", statusDetails = "Success", responseCode = 0,
    observedGeneration = gen,
    conditions = {
      cond("Ready", "True", "Success", "Command succeeded", gen),
      cond("Reconciling", "False", "Success", "", gen),
      cond("Stalled", "False", "Success", "", gen),
      cond("Finished", "True", "Success", "Command succeeded", gen),
    },
  }
end

local function terminal_failure(ssm, details, code, gen)
  gen = gen or 1
  return {
    status = ssm, statusDetails = details, responseCode = code,
    observedGeneration = gen,
    conditions = {
      cond("Ready", "False", ssm, "Command ended " .. ssm, gen),
      cond("Reconciling", "False", ssm, "", gen),
      cond("Stalled", "True", ssm, "Command ended " .. ssm, gen),
      cond("Finished", "True", ssm, "Command ended " .. ssm, gen),
    },
  }
end

local function permanent_error(reason, message, gen)
  gen = gen or 1
  return {
    observedGeneration = gen,
    conditions = {
      cond("Ready", "False", reason, message, gen),
      cond("Reconciling", "False", reason, message, gen),
      cond("Stalled", "True", reason, message, gen),
      cond("Finished", "True", reason, message, gen),
    },
  }
end

-- No status yet / not terminal: Progressing.
case("no status yet", cinv(1, nil), "Progressing", "Waiting for the operator")
case("empty status", cinv(1, {}), "Progressing", "Waiting for the operator")
-- The CRD defaults a missing status to {observedGeneration: -1} (no conditions).
case("status defaulted by the CRD (observedGeneration -1)", cinv(1, { observedGeneration = -1 }),
  "Progressing", "Waiting for the operator's first status (not observed yet, or running and younger than --progress-after)", true)
case("defaulted status after a spec change (generation 2)", cinv(2, { observedGeneration = -1 }),
  "Progressing", "first status", false)
case("defaulted status without metadata.generation", { metadata = { name = "x" },
  status = { observedGeneration = -1 } }, "Progressing", "first status", false)
case("Pending", cinv(1, running("Pending")), "Progressing", "Pending")
case("InProgress", cinv(1, running("InProgress")), "Progressing", "InProgress")
case("Delayed", cinv(1, running("Delayed")), "Progressing", "Delayed")
case("Cancelling", cinv(1, running("Cancelling")), "Progressing", "Cancelling")
case("status without conditions", cinv(1, { status = "InProgress", observedGeneration = 1 }),
  "Progressing", "SSM status InProgress")
case("unknown future SSM status", cinv(1, { status = "Paused", observedGeneration = 1 }),
  "Progressing", "Paused")

-- Transient errors keep Reconciling=True and Stalled=False.
local throttled = running("InProgress")
throttled.conditions[2] = cond("Reconciling", "True", "Throttled", "SSM throttled the request; retrying in 30s")
case("throttled (transient)", cinv(1, throttled), "Progressing", "SSM throttled the request; retrying in 30s", true)

-- Success: Healthy.
case("Success", cinv(1, succeeded()), "Healthy", "SSM status Success, response code 0", true)
case("Success at generation 3", cinv(3, succeeded(3)), "Healthy", "Success")

-- Terminal failures: Degraded with the SSM status and details.
case("Failed", cinv(1, terminal_failure("Failed", "Failed", 1)), "Degraded",
  "SSM status Failed, response code 1", true)
case("TimedOut (delivery)", cinv(1, terminal_failure("TimedOut", "Delivery Timed Out", -1)), "Degraded",
  "SSM status TimedOut (Delivery Timed Out)", true)
case("Cancelled", cinv(1, terminal_failure("Cancelled", "Cancelled", -1)), "Degraded", "Cancelled")
case("Failed, Undeliverable", cinv(1, terminal_failure("Failed", "Undeliverable", -1)), "Degraded", "Undeliverable")
case("Failed without conditions", cinv(1, { status = "Failed", responseCode = 2, observedGeneration = 1 }),
  "Degraded", "response code 2")

-- Permanent errors: Stalled=True, Degraded with the condition's message.
case("Stalled InvalidInstanceId", cinv(1, permanent_error("InvalidInstanceId",
  "SSM does not know managed node i-0123456789abcdef0")), "Degraded",
  "SSM does not know managed node i-0123456789abcdef0", true)
case("Stalled InvocationNotFound", cinv(1, permanent_error("InvocationNotFound",
  "No invocation of command 8f2f6d1e-2b0c-4e4b-9a53-0c7b9f0e1a11 on i-0123456789abcdef0 after 5m0s")),
  "Degraded", "No invocation of command", false)
case("Stalled with empty message uses the reason", cinv(1, permanent_error("InvalidPluginName", "")),
  "Degraded", "InvalidPluginName", true)
local stalled_in_progress = running("InProgress")
stalled_in_progress.conditions[3] = cond("Stalled", "True", "AccessDenied", "Not authorized to call ssm:GetCommandInvocation")
case("Stalled wins over a non-terminal SSM status", cinv(1, stalled_in_progress), "Degraded",
  "Not authorized", false)

-- Stale status: the spec changed after the status was written.
case("Success for an older generation", cinv(2, succeeded(1)), "Progressing", "observe generation 2")
case("InProgress for an older generation", cinv(3, running("InProgress", nil, 2)), "Progressing",
  "Waiting for the operator to observe generation 3 (status describes generation 2)", true)
case("Failed for an older generation", cinv(4, terminal_failure("Failed", "Failed", 1, 3)), "Progressing",
  "Waiting for the operator to observe generation 4 (status describes generation 3)", true)
local stale_stalled = running("InProgress", nil, 2)
stale_stalled.conditions[3] = cond("Stalled", "True", "InvalidPluginName", "old error", 1)
case("Stalled condition of an older generation is ignored", cinv(2, stale_stalled), "Progressing", "InProgress")
case("no metadata.generation", { metadata = { name = "x" }, status = succeeded(1) }, "Healthy", "Success")

-- Command: the same script under the key ssm.operator.dev_Command. All four
-- conditions carry the same reason and message (src/command/status.rs).
local function command(generation, status)
  return {
    apiVersion = "ssm.operator.dev/v1alpha1",
    kind = "Command",
    metadata = { name = "restart-web", namespace = "ops", generation = generation },
    spec = {
      documentName = "AWS-RunShellScript",
      targets = { { key = "tag:Role", values = { "web" } } },
    },
    status = status,
  }
end

local function standing(ready, reconciling, stalled, reason, message, gen)
  local finished = "False"
  if ready == "True" or stalled == "True" then finished = "True" end
  return {
    cond("Ready", ready, reason, message, gen),
    cond("Reconciling", reconciling, reason, message, gen),
    cond("Stalled", stalled, reason, message, gen),
    cond("Finished", finished, reason, message, gen),
  }
end

local marker = "op:0123456789abcdef"
local command_id = "8f2f6d1e-2b0c-4e4b-9a53-0c7b9f0e1a11"

local function send_record(gen)
  return { generation = gen, marker = marker, time = "2025-01-01T00:00:00Z" }
end

-- Reconciling=True while the send is made or looked for; no status.status yet.
local function cmd_sending(gen)
  gen = gen or 1
  local message = "sending generation " .. gen .. " to SSM (Comment marker " .. marker .. ")"
  return {
    observedGeneration = gen, send = send_record(gen),
    conditions = standing("False", "True", "False", "Pending", message, gen),
  }
end

-- Stalled=True without a run: the send was not made, or its fate is unknown.
local function cmd_refused(reason, message, gen)
  gen = gen or 1
  return {
    observedGeneration = gen, send = send_record(gen),
    conditions = standing("False", "False", "True", reason, message, gen),
  }
end

-- What SSM reports for the run (command_status::observed).
local function cmd_observed(ssm, completed, target, errors, gen)
  gen = gen or 1
  local ready, reconciling, stalled = "False", "True", "False"
  if ssm == "Success" then
    ready, reconciling = "True", "False"
  elseif ssm == "Failed" or ssm == "TimedOut" or ssm == "Cancelled" then
    reconciling, stalled = "False", "True"
  end
  local message = string.format("SSM reports %s: %d of %d nodes done, %d failed, 0 not reached",
    ssm, completed, target, errors)
  return {
    observedGeneration = gen, commandId = command_id, send = send_record(gen),
    status = ssm, statusDetails = ssm, requestedDateTime = "2025-01-01T00:00:01.000Z",
    targetCount = target, completedCount = completed, errorCount = errors,
    deliveryTimedOutCount = 0, done = completed .. "/" .. target,
    conditions = standing(ready, reconciling, stalled, ssm, message, gen),
  }
end

case("Command: status defaulted by the CRD", command(1, { observedGeneration = -1 }),
  "Progressing", "Waiting for the operator's first status (not observed yet, or running and younger than --progress-after)", true)
case("Command: no status yet", command(1, nil), "Progressing",
  "Waiting for the operator to report the SSM status", true)
case("Command: Sending (intent recorded, no status.status)", command(1, cmd_sending()),
  "Progressing", "sending generation 1 to SSM (Comment marker " .. marker .. ")", true)
local sent = cmd_sending()
sent.commandId = command_id
sent.conditions = standing("False", "True", "False", "Pending", "SSM accepted the command: " .. command_id, 1)
case("Command: Sent, SSM has not reported yet", command(1, sent), "Progressing",
  "SSM accepted the command: " .. command_id, true)

local disabled = "sending commands is disabled in this operator (start it with " ..
  "--send-commands, chart value sendCommands.enabled)"
local not_allowed = "document Evil-Document is not in this operator's --allowed-documents " ..
  "(chart value sendCommands.allowedDocuments)"
local send_failed = "SSM refused the send: InvalidParameters: Parameter \"commands\" is required"
local send_unknown = "a send was attempted but its reply was lost, and SSM refused the search " ..
  "for it (ListCommands): AccessDeniedException: not authorized to perform ssm:ListCommands"
local disabled_status = cmd_refused("SendingDisabled", disabled)
disabled_status.send = nil -- nothing was intended
case("Command: Stalled SendingDisabled", command(1, disabled_status), "Degraded", disabled, true)
local not_allowed_status = cmd_refused("DocumentNotAllowed", not_allowed)
not_allowed_status.send = nil
case("Command: Stalled DocumentNotAllowed", command(1, not_allowed_status), "Degraded", not_allowed, true)
case("Command: Stalled SendFailed", command(1, cmd_refused("SendFailed", send_failed)),
  "Degraded", send_failed, true)
case("Command: Stalled SendUnknown", command(1, cmd_refused("SendUnknown", send_unknown)),
  "Degraded", send_unknown, true)
case("Command: SendingDisabled after a spec change (generation 2)",
  command(2, cmd_refused("SendingDisabled", disabled, 2)), "Degraded", "--send-commands", false)

case("Command: Pending", command(1, cmd_observed("Pending", 0, 0, 0)), "Progressing",
  "SSM status Pending, 0/0 done, 0 failed", true)
case("Command: InProgress with counts", command(1, cmd_observed("InProgress", 3, 10, 0)),
  "Progressing", "SSM status InProgress, 3/10 done, 0 failed", true)
case("Command: Cancelling", command(1, cmd_observed("Cancelling", 3, 10, 0)), "Progressing",
  "SSM status Cancelling, 3/10 done", false)
local cmd_throttled = cmd_observed("InProgress", 3, 10, 1)
cmd_throttled.conditions = standing("False", "True", "False", "Throttled",
  "SSM throttled the request: Rate exceeded", 1)
case("Command: transient error while tracking keeps the counts", command(1, cmd_throttled),
  "Progressing", "SSM status InProgress, 3/10 done, 1 failed; SSM throttled the request: Rate exceeded", true)
local cmd_denied = cmd_observed("InProgress", 3, 10, 0)
cmd_denied.conditions = standing("False", "False", "True", "AccessDenied",
  "Not authorized to call ssm:ListCommands", 1)
case("Command: Stalled on an SSM error while InProgress", command(1, cmd_denied), "Degraded",
  "Not authorized to call ssm:ListCommands", true)

case("Command: Success", command(1, cmd_observed("Success", 10, 10, 0)), "Healthy",
  "SSM status Success, 10/10 done, 0 failed", true)
case("Command: Success within maxErrors shows the errors", command(1, cmd_observed("Success", 10, 10, 1)),
  "Healthy", "10/10 done, 1 failed", false)
case("Command: Failed with errorCount", command(1, cmd_observed("Failed", 3, 3, 2)), "Degraded",
  "SSM status Failed, 3/3 done, 2 failed", true)
local not_reached = cmd_observed("TimedOut", 1, 3, 0)
not_reached.deliveryTimedOutCount = 2
case("Command: TimedOut names the nodes not reached", command(1, not_reached), "Degraded",
  "SSM status TimedOut, 1/3 done, 0 failed, 2 not reached", true)
case("Command: Cancelled", command(1, cmd_observed("Cancelled", 1, 3, 0)), "Degraded", "Cancelled")

case("Command: Success for an older generation", command(2, cmd_observed("Success", 10, 10, 0, 1)),
  "Progressing", "Waiting for the operator to observe generation 2 (status describes generation 1)", true)
case("Command: Failed for an older generation", command(3, cmd_observed("Failed", 3, 3, 2, 2)),
  "Progressing", "observe generation 3", false)
case("Command: SendFailed for an older generation", command(2, cmd_refused("SendFailed", send_failed, 1)),
  "Progressing", "observe generation 2", false)

-- The script must stay within Lua 5.1 (gopher-lua): look for 5.2+ syntax
-- and library calls outside comments and strings.
do
  local code = script:gsub("%-%-%[%[.-%]%]", ""):gsub("%-%-[^\n]*", "")
  code = code:gsub('"[^"\n]*"', '""'):gsub("'[^'\n]*'", "''")
  local forbidden = {
    { "goto ", "goto" }, { "//", "integer division" }, { "::", "labels" },
    { "<<", "shift" }, { ">>", "shift" }, { "&", "bitwise and" }, { "|", "bitwise or" },
    { "<const>", "const variables" }, { "<close>", "to-be-closed variables" },
    { "table.unpack", "table.unpack (5.2+)" }, { "table.move", "table.move (5.3+)" },
    { "table.pack", "table.pack (5.2+)" }, { "math.tointeger", "math.tointeger (5.3+)" },
    { "math.type", "math.type (5.3+)" }, { "utf8.", "utf8 library (5.3+)" },
    { "string.pack", "string.pack (5.3+)" }, { "_ENV", "_ENV (5.2+)" },
  }
  local found = {}
  for _, f in ipairs(forbidden) do
    if string.find(code, f[1], 1, true) then found[#found + 1] = f[2] end
  end
  -- "~" is only allowed as part of "~=" (a lone "~" is 5.3 bitwise xor/not).
  if string.find((code:gsub("~=", "")), "~", 1, true) then found[#found + 1] = "bitwise xor/not" end
  report("health.lua uses Lua 5.1 syntax only", #found == 0, "uses " .. table.concat(found, ", "))
end

-- The argocd-cm snippet must embed exactly this script, once per kind, and
-- hold no other health key.
do
  local prefix = "resource.customizations.health."
  local keys = {
    prefix .. "ssm.operator.dev_CommandInvocation",
    prefix .. "ssm.operator.dev_Command",
  }
  local snippet_path = dir .. "/argocd-cm-snippet.yaml"
  local ok, snippet = pcall(read_file, snippet_path)
  local want = script:gsub("%s+$", "")

  -- The block scalar under `key: |`, de-indented; nil when the key is absent.
  local function embedded(key)
    local lines, inside, indent = {}, false, nil
    for line in (snippet .. "\n"):gmatch("([^\n]*)\n") do
      if inside then
        if line:match("^%s*$") then
          lines[#lines + 1] = ""
        else
          local lead = line:match("^(%s*)")
          if indent == nil then indent = #lead end
          if #lead < indent then break end
          lines[#lines + 1] = line:sub(indent + 1)
        end
      elseif line:match("^%s*(%S+):") == key then
        inside = true
      end
    end
    if not inside then return nil end
    while #lines > 0 and lines[#lines] == "" do lines[#lines] = nil end
    return table.concat(lines, "\n")
  end

  for _, key in ipairs(keys) do
    local name = "argocd-cm-snippet.yaml " .. key .. " embeds health.lua"
    local got = ok and embedded(key) or nil
    if not ok then
      report(name, false, "cannot read " .. snippet_path)
    elseif got == nil then
      report(name, false, "key not found: " .. key .. ": |")
    elseif got ~= want then
      -- Name the first line that differs.
      local n = 1
      local wl, el = {}, {}
      for l in (want .. "\n"):gmatch("([^\n]*)\n") do wl[#wl + 1] = l end
      for l in (got .. "\n"):gmatch("([^\n]*)\n") do el[#el + 1] = l end
      while n <= #wl and wl[n] == el[n] do n = n + 1 end
      report(name, false,
        string.format("differs at script line %d: %q vs %q", n, tostring(wl[n]), tostring(el[n])))
    else
      report(name, true)
    end
  end

  if ok then
    local expected, extra = {}, {}
    for _, key in ipairs(keys) do expected[key] = true end
    for line in (snippet .. "\n"):gmatch("([^\n]*)\n") do
      local key = line:match("^%s*(resource%.customizations%.health%.[^%s:]+):")
      if key ~= nil and not expected[key] then extra[#extra + 1] = key end
    end
    report("argocd-cm-snippet.yaml holds no other health key", #extra == 0,
      "unexpected " .. table.concat(extra, ", "))
  end
end

print(string.format("%d passed, %d failed", passed, failed))
os.exit(failed == 0 and 0 or 1)
