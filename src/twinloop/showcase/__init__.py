"""Programs that show and measure the product, apart from it: the narrated demo, the case
study, the benchmark runner and the continual-learning experiment. Nothing in the product
imports this package."""
