"""The rules by which ``prepare_model`` turns torch functionals / tensor methods into modules.

Before:  ``call_function F.leaky_relu(x, negative_slope=0.2)``
After:   ``call_module leaky_relu(x)`` with ``leaky_relu = nn.LeakyReLU(0.2)``

Rules are looked up by the fx node's ``target``: the function object for
``call_function`` nodes (``F.relu``, ``torch.relu``, ``operator.add``...), the method
name for ``call_method`` nodes (``"relu"``, ``"view"``...). Never by node name.

Each rule's ``build`` function has the same parameters as the op it converts (same
names, same defaults), so positional and keyword calls bind alike. ``build`` receives
the node's arguments (fx ``Node`` objects for run-time values, Python values for
constants) and returns a ``Replacement``: the module plus the arguments of the new
``call_module`` node. It raises ``Decline(reason)`` when the call cannot be expressed
by a module without changing what the model computes; the node then stays as it is
and the reason goes into the summary.

Files:

* ``base.py``        ``Rule``, ``Replacement``, ``Decline``, ``ConversionContext`` (what a
                     rule may ask about the graph) and the helpers rules share.
* ``activations.py`` relu, clamp/hardtanh, gelu, softmax, ...
* ``dropout.py``     dropout variants and torchvision's stochastic depth.
* ``spatial.py``     pooling, padding, resizing, pixel/channel shuffles.
* ``layers.py``      layers with parameters: linear, conv, transposed conv, norms.
* ``arithmetic.py``  add, sub, mul, div, matmul, bmm.
* ``tensor_ops.py``  cat, stack, reshape/view, permute, transpose, mean, sum, chunk, split.
* ``registry.py``    assembles the table from the families above and answers lookups
                     (``find_rule``, ``describe_target``, ``reason_kept``).

This package only decides *what* to build; ``prepare.py`` edits the graph.
"""
