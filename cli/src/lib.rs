//! kubectl plugin: the product guide's token actions from the terminal.
