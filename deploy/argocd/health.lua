-- Argo CD health check for splatops.dev/GaussianSplatTraining.
-- Progressing until the operator has seen the latest spec (status.observedGeneration) and
-- while Pending, Queued or Running; Healthy once Succeeded; Degraded when Failed;
-- Suspended while spec.suspend or phase Suspended.
local hs = {}
local generation = obj.metadata and obj.metadata.generation or nil
local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the splatops operator to pick up the training"
  return hs
end
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end
local phase = status.phase
local progress = status.progress or {}
-- What to show after the phase: for Running, the trainer's progress line
-- ("Iteration 15234/30000 | Loss: 0.0234") when there is one, else status.message; for the
-- other phases, status.message. Empty strings count as absent.
local function nonempty(s)
  if s ~= nil and s ~= "" then
    return s
  end
  return nil
end
local detail = nonempty(status.message) or ""
if phase == "Running" then
  detail = nonempty(progress.message) or detail
end
if phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = "Trained: " .. (status.modelPath or "results.ply")
elseif phase == "Failed" then
  hs.status = "Degraded"
  hs.message = (status.reason or "Failed") .. ": " .. detail
elseif phase == "Suspended" or (obj.spec ~= nil and obj.spec.suspend == true) then
  hs.status = "Suspended"
  hs.message = "Suspended (spec.suspend)"
elseif phase == "Pending" or phase == "Queued" or phase == "Running" then
  hs.status = "Progressing"
  if detail ~= "" then
    hs.message = phase .. ": " .. detail
  else
    hs.message = phase
  end
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. tostring(phase)
end
return hs
