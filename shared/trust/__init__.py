"""Who may do what on the bus: the NATS accounts and permissions generated from the contract
(`accounts`), a deployment's NKey identities (`identities`), and signed operator commands with their
quorums (`operators`)."""
