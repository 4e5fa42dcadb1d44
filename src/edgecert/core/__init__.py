"""The pure core: certificate facts, renewal decisions, schedules and bundle checks.

Nothing here reads the clock, the RNG, environment variables, files or the network, or imports
asyncio or azure; every function is a function of its arguments (STYLE.md §1).
"""
