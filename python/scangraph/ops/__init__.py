"""Public op functions, one module per kernel family. Importing registers fake kernels,
autograd formulas and the Triton ops."""
