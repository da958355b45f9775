"""The fine-grained joint search (Algorithm 1) and its accuracy oracles."""
