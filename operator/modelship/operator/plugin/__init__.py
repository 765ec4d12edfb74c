"""The `kubectl modelship` plugin: `cli` (arguments, API calls, actions) and `text` (status as text).

It talks to the API only through the user's kubeconfig, and reads the rollout from status.
"""
