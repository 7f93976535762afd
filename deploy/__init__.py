"""Deployment helpers kept out of the installed package."""
