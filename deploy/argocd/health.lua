-- Argo CD health check for ssm.operator.dev/CommandInvocation and
-- ssm.operator.dev/Command (the same script under both argocd-cm keys).
--
-- Healthy     status.status is Success.
-- Degraded    status.status is Failed, TimedOut or Cancelled, or the operator
--             set Stalled=True: a permanent error (InvalidInstanceId,
--             InvocationNotFound, AccessDenied, ...) or, for a Command, a send
--             that was not made (SendingDisabled, DocumentNotAllowed,
--             SendFailed, SendUnknown); the message says why.
-- Progressing everything else: no status yet, the CRD's default status
--             {observedGeneration: -1} (the operator has not written a status
--             yet: not observed, or running and younger than
--             --progress-after), a Command being sent, Pending, InProgress,
--             Delayed, Cancelling, transient errors (Throttled,
--             SsmUnavailable), or a status that describes an older spec
--             generation.
--
-- Messages carry SSM's status, details and response code (CommandInvocation)
-- or node counts (Command: "3/10 done, 0 failed").
--
-- Argo CD runs this with gopher-lua (Lua 5.1): no goto, integer division,
-- bitwise operators or other Lua 5.2+ features.
local hs = {}

local function num(n)
  if type(n) == "number" and n == math.floor(n) then
    return string.format("%d", n)
  end
  return tostring(n)
end

local function ssm_message(st)
  local msg = "SSM status " .. tostring(st.status)
  if st.statusDetails ~= nil and st.statusDetails ~= "" and st.statusDetails ~= st.status then
    msg = msg .. " (" .. tostring(st.statusDetails) .. ")"
  end
  if type(st.responseCode) == "number" and st.responseCode ~= -1 then
    msg = msg .. ", response code " .. num(st.responseCode)
  end
  -- A Command's node counts.
  if type(st.completedCount) == "number" and type(st.targetCount) == "number" then
    msg = msg .. ", " .. num(st.completedCount) .. "/" .. num(st.targetCount) .. " done"
    if type(st.errorCount) == "number" then
      msg = msg .. ", " .. num(st.errorCount) .. " failed"
    end
    if type(st.deliveryTimedOutCount) == "number" and st.deliveryTimedOutCount > 0 then
      msg = msg .. ", " .. num(st.deliveryTimedOutCount) .. " not reached"
    end
  end
  return msg
end

local failed = { Failed = true, TimedOut = true, Cancelled = true }
local waiting = "Waiting for the operator to report the SSM status"

if obj.status == nil then
  hs.status = "Progressing"
  hs.message = waiting
  return hs
end
local st = obj.status

-- The CRD defaults a missing status to {observedGeneration: -1}: the operator
-- has not written anything yet (a running resource's first progress waits for
-- --progress-after).
if st.observedGeneration ~= nil and st.observedGeneration < 0 then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator's first status (not observed yet, or running and younger than --progress-after)"
  return hs
end

local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end

if generation ~= nil and st.observedGeneration ~= nil and st.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. num(generation) ..
    " (status describes generation " .. num(st.observedGeneration) .. ")"
  return hs
end

-- Current conditions only: one stamped for an older generation is stale.
local stalled = nil
local reconciling = nil
if st.conditions ~= nil then
  for _, c in ipairs(st.conditions) do
    local current = generation == nil or c.observedGeneration == nil or c.observedGeneration >= generation
    if current and c.status == "True" then
      if c.type == "Stalled" then
        stalled = c
      elseif c.type == "Reconciling" then
        reconciling = c
      end
    end
  end
end

if st.status ~= nil and failed[st.status] then
  hs.status = "Degraded"
  hs.message = ssm_message(st)
  return hs
end

if stalled ~= nil then
  hs.status = "Degraded"
  if stalled.message ~= nil and stalled.message ~= "" then
    hs.message = stalled.message
  elseif stalled.reason ~= nil and stalled.reason ~= "" then
    hs.message = stalled.reason
  else
    hs.message = "Stalled"
  end
  return hs
end

if st.status == "Success" then
  hs.status = "Healthy"
  hs.message = ssm_message(st)
  return hs
end

-- Not terminal. The Reconciling message says what the operator is doing (a
-- Command being sent, a transient error being retried); when it only repeats
-- SSM's status, the status line with details and counts says more.
hs.status = "Progressing"
local doing = nil
if reconciling ~= nil and reconciling.message ~= nil and reconciling.message ~= "" then
  doing = reconciling.message
end
if st.status ~= nil and (doing == nil or reconciling.reason == st.status) then
  hs.message = ssm_message(st)
elseif doing ~= nil and st.status ~= nil and type(st.completedCount) == "number" then
  -- A Command's run goes on while the operator retries: keep its counts.
  hs.message = ssm_message(st) .. "; " .. doing
elseif doing ~= nil then
  hs.message = doing
else
  hs.message = waiting
end
return hs
