-- Argo CD health of smtpgate's ReceiveConnector, TransportServer, AcceptedDomain and
-- TransportConfig (Lua 5.1, as Argo CD runs it; `obj` is the resource). Healthy is the
-- operator's Ready condition True for the current generation: status.observedGeneration ==
-- metadata.generation. Reasons are those operator/reconcile.py writes (with readiness.py
-- and secretrefs.py) and, for a TransportConfig, operator/trust.py; a reason not listed
-- here (SecretNotFound, ConfigMapNotFound, say) is Degraded. tests/gitops/test_argocd_health.py
-- holds them together.
local hs = {}

-- Ready False for these is on its way: pods starting, a workload taking the new spec, the
-- connector waiting for its server to serve or to exist.
local transient = {
  Progressing = true,
  WorkloadPending = true,
  ReplicasNotReady = true,
  ServerNotReady = true,
  ServerNotFound = true,
}
-- Nothing serves, on purpose.
local suspended = { NoReplicas = true, Disabled = true }

local function condition(kind)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function say(status, message)
  hs.status = status
  hs.message = message
  return hs
end

local function explain(c)
  local text = c.type .. " " .. tostring(c.status) .. " (" .. tostring(c.reason) .. ")"
  if c.message ~= nil and c.message ~= "" then
    text = text .. ": " .. c.message
  end
  return text
end

local function health()
  local generation = obj.metadata.generation
  if obj.status == nil then
    return say("Progressing", "Waiting for the operator to write a status")
  end
  if obj.status.observedGeneration ~= generation then
    return say("Progressing", "Waiting for the operator to observe generation " .. tostring(generation))
  end
  local ready = condition("Ready")
  if ready == nil or (ready.observedGeneration ~= nil and ready.observedGeneration ~= generation) then
    return say("Progressing", "Waiting for the Ready condition of generation " .. tostring(generation))
  end
  local accepted = condition("Accepted")
  if accepted ~= nil then
    if suspended[accepted.reason] then
      return say("Suspended", explain(accepted))
    end
    if accepted.status == "False" then
      if transient[accepted.reason] then
        return say("Progressing", explain(accepted))
      end
      return say("Degraded", explain(accepted))
    end
  end
  local certificate = condition("CertificateReady")
  if certificate ~= nil and certificate.status == "False" then
    return say("Degraded", explain(certificate))
  end
  if ready.status == "True" then
    local rejected = condition("ConnectorsRejected")
    if rejected ~= nil and rejected.status == "True" then
      return say("Healthy", tostring(ready.message) .. "; rejected: " .. tostring(rejected.message))
    end
    return say("Healthy", ready.message or "Ready")
  end
  if suspended[ready.reason] then
    return say("Suspended", explain(ready))
  end
  if ready.status ~= "False" or transient[ready.reason] then
    return say("Progressing", explain(ready))
  end
  -- InvalidSpec, ApplyFailed, ServerInvalid, and any reason not known to be on its way.
  return say("Degraded", explain(ready))
end

return health()
