"""Built-in backends, one module each; `cells.registry` registers them."""
