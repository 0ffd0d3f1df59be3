"""The synthetic marketplace (DESIGN §7): merchants with hidden tastes, products drawn procedurally
(``drawing``), the oracle that reads a merchant's utility from the pixels (``oracle``), and the raw logs
and ``truth.json`` it writes (``synthetic``). The product calls it only where synthetic data is asked
for (``prepare --synthetic``, the oracle columns of a synthetic workspace, the tiny backbones' catalogue);
real logs never import it.
"""
