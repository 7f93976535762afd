"""The `certbus` command line for operators, requesters and auditors."""
