"""The sandbox: local emulators of Key Vault, managed identity, IoT Hub and the IoT Edge workload API.

They speak the real wire protocols so that the real, unmodified Azure SDK clients work against them
(../shared/reference/ is their specification). Every server listens on loopback only, with TLS from
a CA the sandbox makes at start; clients trust that CA explicitly, never by turning verification off.
"""
