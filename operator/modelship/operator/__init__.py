"""The Modelship operator: `kopf run -m modelship.operator` loads the handlers below."""

from modelship.operator import handlers as handlers
