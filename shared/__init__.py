"""Code that two or more Certbus services (or their clients) need; never a CA private key."""
