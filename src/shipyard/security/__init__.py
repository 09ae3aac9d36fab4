"""Security: who may call the server (API keys, JWTs, scopes), over what (TLS), and the audit log.

One concept per module: ``principal`` (scopes, the caller), ``keys`` (API keys in the registry
database), ``jwt`` (bearer tokens from an identity provider), ``auth`` (a credential to a
principal, for every transport), ``ratelimit``, ``tls``, ``audit`` (the hash-chained log of
admin actions), ``egress`` (the hosts the server may reach on a caller's behalf).
"""
