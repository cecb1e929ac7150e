"""The credential broker: mTLS HTTPS API, authentication, policy, leases."""
