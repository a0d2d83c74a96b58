//! A Kubernetes API test server speaking the real REST and watch protocol.
