"""The device agent's Qt views: thin widgets over the Qt-free models of
``device_agent.agent_model`` (resident agent) and ``device_agent.call_model``
(per-session process)."""
