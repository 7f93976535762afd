"""What every layer may use: settings from the environment (`settings`), the clock (`clock`),
files written atomically with their modes (`files`) and structured logs (`logs`). Imports nothing
else of Certbus."""
