"""The local launcher: `make run` (`python -m deploy.local.devstack`) and the engines the tests start."""
