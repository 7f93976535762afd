"""The requester's and operator's side of the bus: the SDK (`sdk`; what it raises in `errors`), the
`certbus` command line (`cli`) and the renewal agent (`agent`). Never imports the runtime: it
reaches services only over NATS. Services use it only through `api`, where they act as clients
themselves."""
