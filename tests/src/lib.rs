//! Cross-component and kind end-to-end tests.
