//! The product API served behind the proxy.
