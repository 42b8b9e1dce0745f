"""Model-level PTQ algorithms over the quantization core (ptqbench.quant): Gram streaming, scale
reparameterization, GPTQ/ERQ weight solvers, Hessian-guided search, block reconstruction.

They take what they work on as arguments (units, pairs, FP targets); methods compose them.
`ptqbench.quant` never imports this package."""
