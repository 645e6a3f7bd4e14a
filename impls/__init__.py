"""Built-in mechanisms: one package per mechanism, discovered by attnbench.registry."""
