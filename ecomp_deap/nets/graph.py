"""Graph parents: any traced classifier, its channels coupled by Torch-Pruning.

A network whose ``forward`` is not a plain chain (residual adds, depthwise convolutions,
``torch.cat`` branches, functional ops, one-dimensional convolutions, a user's own
``nn.Module``) is read by tracing one forward on example inputs with Torch-Pruning's
``DependencyGraph``. Its coupled groups are the **groups** of the genome: one mask bit
per channel of a group, the group spanning every layer it touches (the output channels
a residual add joins share one bit across every convolution and BatchNorm that writes
or reads them; a depthwise convolution follows its input's channels; a concatenation
maps index ranges).

Each group is stored as :class:`TensorSlice` s: for every state tensor (parameter or
BatchNorm statistic) the group touches, the dimension, the positions along it, and the
group channel each position belongs to. What a group's pruning changes in a layer is
found by running Torch-Pruning's own pruning function on a copy of that layer, so the
coupling and the slicing are the library's.

A network that drops channels ``D`` computes what the parent computes with every
tensor slice of ``D`` set to zero: a dropped channel's producers write 0 (BatchNorm's
scale and shift are zeroed too) and its consumers read it with zero weights, so the
logits are the pruned network's, and a dropped channel's hidden values are the same
for every image (they move no pairwise distance). :func:`read_graph` checks this on the
example inputs against Torch-Pruning's physically pruned copy, and refuses a parent for
which it does not hold (a LayerNorm, an attention layer, ...).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ParentError

SUPPORTED = ("Conv1d/Conv2d (groups 1 or depthwise), Linear, BatchNorm1d/2d, PReLU, and any parameter-free "
             "module or op (activations, pooling, Dropout, Flatten/Unflatten, residual adds, torch.cat, reshapes)")
CHECK_TOLERANCE = 1e-4  # relative agreement of the zeroed and the pruned network on the example inputs


@dataclass(frozen=True)
class TensorSlice:
    """The positions ``index`` (n,) along dimension ``dim`` of state tensor ``tensor``
    (an index into :attr:`Graph.tensor_names`) that belong to a group, and ``root`` (n,)
    the group channel each one belongs to."""

    tensor: int
    dim: int
    index: torch.Tensor
    root: torch.Tensor


@dataclass(frozen=True)
class GroupSpec:
    """One coupled group: ``size`` channels (a mask of that length), named after its root
    layer ``name``; ``slices``, every tensor position it owns."""

    name: str
    size: int
    slices: tuple[TensorSlice, ...]

    @property
    def rows(self) -> tuple[TensorSlice, ...]:
        """The slices along a tensor's first dimension: the rows (filters, units,
        BatchNorm entries) that the group's channels are."""
        return tuple(s for s in self.slices if s.dim == 0)

    @property
    def inputs(self) -> tuple[TensorSlice, ...]:
        """The slices along a weight's input dimension: where consumers read the group."""
        return tuple(s for s in self.slices if s.dim == 1)


@dataclass(frozen=True)
class Layer:
    """A Conv or Linear layer: its weight's tensor index and the output positions per
    example its multiply-adds are repeated over (a feature map's spatial size)."""

    name: str
    weight: int
    positions: int


@dataclass(frozen=True, eq=False)
class Graph:
    """A parent read as coupled groups over its state tensors. ``model`` is an
    evaluation-mode copy (the template of every functional forward and of export);
    ``tensor_names[i]`` is state tensor ``i`` (parameters, then BatchNorm statistics,
    in the model's order); ``groups`` the prunable groups, ``layers`` the Conv and Linear
    layers (what mutation and recombination address), ``output_layer`` the classifier
    (never pruned). The interface the search reads is :class:`~ecomp_deap.nets.chain.Chain`'s."""

    model: nn.Module
    tensor_names: tuple[str, ...]
    is_parameter: tuple[bool, ...]
    shapes: tuple[tuple[int, ...], ...]
    groups: tuple[GroupSpec, ...]
    layers: tuple[Layer, ...]
    output_layer: str
    input_shape: tuple[int, ...]
    n_classes: int
    default_embedding_names: tuple[str, ...]
    module_names: tuple[str, ...]
    largest_output: int  # elements of one example's largest module output

    kind = "graph"

    # ------------------------------------------------------------ as a Chain
    @property
    def n_hidden(self) -> int:
        """The number of groups."""
        return len(self.groups)

    @property
    def hidden_widths(self) -> tuple[int, ...]:
        """Channels per group (the masks' lengths)."""
        return tuple(g.size for g in self.groups)

    @property
    def stage_names(self) -> tuple[str, ...]:
        """The Conv and Linear layers' names (what ``recombination_layers`` may name)."""
        return tuple(layer.name for layer in self.layers)

    @property
    def is_conv(self) -> bool:
        """Always: a graph parent's groups are channels (its Linear units count as channels)."""
        return True

    @property
    def is_mlp(self) -> bool:
        """Never: the MLP-only paths (reference crossover, student-t) do not apply."""
        return False

    @property
    def group_kind(self) -> str:
        """What the groups are called in messages."""
        return "channels"

    @property
    def embedding_names(self) -> tuple[str, ...]:
        """Every module whose output can enter the similarity loss."""
        return self.module_names

    def embedding_index(self, name: str) -> str:
        """The module ``name`` (a KeyError when the parent has none of that name)."""
        if name not in self.module_names:
            raise KeyError(name)
        return name

    def default_embeddings(self) -> tuple[str, ...]:
        """Each stage's output (see :func:`stage_outputs`)."""
        return self.default_embedding_names

    def largest_feature_map(self) -> int:
        """Elements of one example's largest module output (bounds a forward's memory)."""
        return self.largest_output

    def describe(self) -> str:
        """e.g. 'ResNet, 9 coupled channel groups (688 channels), 20 Conv/Linear layers'."""
        return (f"{type(self.model).__name__}, {len(self.groups)} coupled channel groups "
                f"({sum(self.hidden_widths)} channels), {len(self.layers)} Conv/Linear layers")

    # ------------------------------------------------------------------ sizes
    def kept_shapes(self, kept=None) -> list[tuple[int, ...]]:
        """Each state tensor's shape when ``kept`` is kept: per group a (H_g,) bool mask
        (exact), or a count of channels (exact when each of the group's channels owns the
        same part of every tensor it touches, else the expected shape); None: the parent."""
        shapes = [list(s) for s in self.shapes]
        if kept is None:
            return [tuple(s) for s in shapes]
        for g, k in zip(self.groups, kept):
            for s in g.slices:
                if isinstance(k, torch.Tensor):
                    dropped = int((~k[s.root]).sum())
                else:
                    dropped = int(round(len(s.index) * (g.size - int(k)) / g.size))
                shapes[s.tensor][s.dim] -= dropped
        return [tuple(s) for s in shapes]

    def sizes(self, kept=None) -> tuple[int, int]:
        """(parameters, multiply-adds per example of the Conv and Linear layers) when
        ``kept`` (per group a mask or a count, see :meth:`kept_shapes`; None: the parent) is kept."""
        shapes = self.kept_shapes(kept)
        params = sum(math.prod(s) for s, p in zip(shapes, self.is_parameter) if p)
        macs = sum(math.prod(shapes[layer.weight]) * layer.positions for layer in self.layers)
        return params, macs


# ---------------------------------------------------------------- reading
def read_graph(model: nn.Module, example_inputs: torch.Tensor) -> Graph:
    """Trace ``model`` (an ``nn.Module`` classifier; evaluation mode) on ``example_inputs``
    (N, ...) and read its coupled groups; one :class:`~ecomp_deap.errors.ParentError`
    line for a model that cannot be traced, has a layer whose channels cannot be dropped
    without retraining, or does not end in class scores."""
    import torch_pruning as tp

    model = copy.deepcopy(model).cpu().float().eval()
    x = example_inputs[:2].detach().to("cpu", torch.float32)
    _check_modules(model)
    calls = _record_layers(model, x)
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as e:
        raise ParentError(f"parent: its forward fails on inputs of shape {tuple(x.shape[1:])} "
                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise ParentError("parent must return class scores, a (batch, classes) tensor; it returns "
                          + (f"shape {tuple(out.shape[1:])}" if isinstance(out, torch.Tensor) else type(out).__name__))
    names = {m: n for n, m in model.named_modules()}
    layers_called = [(m, shape) for m, shape in calls if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    if not layers_called:
        raise ParentError("parent has no Conv or Linear layer to compress")
    output_module = layers_called[-1][0]
    try:
        with torch.enable_grad():
            dg = tp.DependencyGraph().build_dependency(model, example_inputs=x, verbose=False)
    except Exception as e:
        raise ParentError(f"parent: Torch-Pruning cannot trace its forward ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}); supported: {SUPPORTED}") from None
    tensor_names, is_parameter, shapes, owner = _state_tensors(model)
    index_of = {n: i for i, n in enumerate(tensor_names)}
    groups = []
    for group in dg.get_all_groups(ignored_layers=[output_module], root_module_types=(nn.modules.conv._ConvNd,
                                                                                      nn.Linear)):
        spec = _group_spec(group, names, index_of, shapes)
        if spec is not None:
            groups.append(spec)
    if not groups:
        raise ParentError("parent has no channel group that can be dropped (only its output layer has channels)")
    layers = tuple(Layer(names[m], index_of[f"{names[m]}.weight"], _positions(m, shape))
                   for m, shape in _unique(layers_called))
    graph = Graph(model, tuple(tensor_names), tuple(is_parameter), tuple(shapes), tuple(groups), layers,
                  names[output_module], tuple(int(s) for s in x.shape[1:]), int(out.shape[1]),
                  stage_outputs(model, calls), tuple(n for m, n in ((m, names[m]) for m, _ in _unique(calls)) if n),
                  max(math.prod(shape[1:]) for _, shape in calls))
    check_zeroing_is_pruning(graph, x)
    return graph


def _check_modules(model: nn.Module) -> None:
    """Refuse, by name, a module whose tensors channel masks cannot cut without changing
    what the kept channels compute (normalisation over channels, attention, recurrence)."""
    allowed = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.PReLU)
    for name, m in model.named_modules():
        own = list(m.parameters(recurse=False)) + [b for b in m.buffers(recurse=False) if b.is_floating_point()]
        if not own:
            continue
        if not isinstance(m, allowed):
            raise ParentError(f"parent module {name!r} is {type(m).__name__}, whose channels cannot be dropped "
                              f"without retraining here; supported: {SUPPORTED}")
        if isinstance(m, nn.modules.conv._ConvTransposeNd):
            raise ParentError(f"parent module {name!r} is {type(m).__name__} (transposed convolutions are not "
                              f"supported); supported: {SUPPORTED}")
        if isinstance(m, nn.modules.conv._ConvNd) and m.groups not in (1, m.in_channels):
            raise ParentError(f"parent module {name!r} is a grouped {type(m).__name__} (groups={m.groups}); only "
                              f"groups=1 and depthwise convolutions are supported")
        if isinstance(m, nn.modules.conv._ConvNd) and m.padding_mode != "zeros":
            raise ParentError(f"parent module {name!r}: padding_mode {m.padding_mode!r} is not supported (only 'zeros')")
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.running_mean is None or m.running_var is None):
            raise ParentError(f"parent module {name!r}: {type(m).__name__} without running statistics "
                              f"(track_running_stats=False) is not supported")


def _record_layers(model: nn.Module, x: torch.Tensor) -> list:
    """Every module call of one forward on ``x``, in order: (module, output shape)."""
    calls, hooks = [], []

    def record(module, _inputs, output):
        if isinstance(output, torch.Tensor):
            calls.append((module, tuple(output.shape)))

    for m in model.modules():
        if m is not model:
            hooks.append(m.register_forward_hook(record))
    try:
        with torch.no_grad():
            model(x)
    except Exception:
        pass  # the caller's own forward reports the error
    finally:
        for h in hooks:
            h.remove()
    return calls


def _unique(calls):
    """The first call of each module, in order."""
    seen, out = set(), []
    for m, shape in calls:
        if id(m) not in seen:
            seen.add(id(m))
            out.append((m, shape))
    return out


def _positions(module: nn.Module, shape: tuple[int, ...]) -> int:
    """Output positions per example a layer's multiply-adds repeat over: a convolution's
    spatial size, a Linear layer's tokens (1 for (N, F) rows)."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return math.prod(shape[2:])
    return math.prod(shape[1:-1])


def _state_tensors(model: nn.Module):
    """The state tensors the genome holds: parameters, then floating-point buffers
    (BatchNorm statistics), in the model's order; names, parameter flags, shapes, and
    each one's owning module."""
    names, is_param, shapes, owner = [], [], [], {}
    for name, p in model.named_parameters():
        names.append(name), is_param.append(True), shapes.append(tuple(p.shape))
    for name, b in model.named_buffers():
        if b.is_floating_point():
            names.append(name), is_param.append(False), shapes.append(tuple(b.shape))
    return names, is_param, shapes, owner


def _pruned_dims(module: nn.Module, handler) -> list[tuple[str, int]]:
    """Which of ``module``'s own tensors Torch-Pruning's ``handler`` cuts, and along which
    dimension: found by pruning channel 0 of a copy and comparing shapes."""
    probe = copy.deepcopy(module)
    before = {n: tuple(t.shape) for n, t in [*probe.named_parameters(recurse=False), *probe.named_buffers(recurse=False)]
              if t.is_floating_point()}
    handler(probe, [0])
    after = {n: tuple(t.shape) for n, t in [*probe.named_parameters(recurse=False), *probe.named_buffers(recurse=False)]
             if t.is_floating_point()}
    dims = []
    for n, shape in before.items():
        changed = [d for d, (a, b) in enumerate(zip(shape, after[n])) if a != b]
        if len(changed) == 1 and shape[changed[0]] - after[n][changed[0]] == 1:
            dims.append((n, changed[0]))
        elif changed:
            raise ParentError(f"parent module {type(module).__name__}: pruning one channel changes {n} from "
                              f"{shape} to {after[n]}, which is not supported")
    return dims


def _group_spec(group, names: dict, index_of: dict, shapes) -> GroupSpec | None:
    """A Torch-Pruning group as a :class:`GroupSpec` (None for a group of one channel:
    nothing to drop)."""
    root_module = group[0].dep.target.module
    size = len(group[0].idxs)
    if size < 2:
        return None
    slices = []
    for item in group.items:
        module = item.dep.target.module
        if not isinstance(module, nn.Module) or module not in names:
            continue  # an op node (add, cat, reshape): no tensors of its own
        index = torch.as_tensor(list(item.idxs), dtype=torch.long)
        root = torch.as_tensor(list(item.root_idxs), dtype=torch.long)
        for local, dim in _pruned_dims(module, item.dep.handler):
            name = f"{names[module]}.{local}" if names[module] else local
            slices.append(TensorSlice(index_of[name], dim, index, root))
    merged = {}
    for s in slices:  # one slice per (tensor, dim): an item reached twice adds nothing new
        key = (s.tensor, s.dim)
        if key not in merged:
            merged[key] = s
        else:
            have = merged[key]
            new = ~torch.isin(s.index, have.index)
            merged[key] = TensorSlice(s.tensor, s.dim, torch.cat([have.index, s.index[new]]),
                                      torch.cat([have.root, s.root[new]]))
    return GroupSpec(names[root_module], size, tuple(sorted(merged.values(), key=lambda s: (s.tensor, s.dim))))


def stage_outputs(model: nn.Module, calls) -> tuple[str, ...]:
    """Default similarity embeddings: each stage's output. The model's top-level children
    that contain a Conv or Linear layer and hold other modules (its stages: a ResNet's
    ``layer1`` ...), but the last; when there is one such container, its children the
    same way (MobileNetV2's ``features``: the blocks after which the output's shape
    changes). A model without such containers (a flat ``nn.Sequential``): the output each
    Conv or Linear layer after the first reads, as a chain's hidden stages give it."""
    names = {m: n for n, m in model.named_modules()}
    shape_of = {}
    for m, shape in calls:
        shape_of.setdefault(m, shape)

    def stages(parent):
        kids = [(n, m) for n, m in parent.named_children()
                if any(isinstance(x, (nn.modules.conv._ConvNd, nn.Linear)) for x in m.modules()) and m in shape_of]
        return [(n, m) for n, m in kids if len(list(m.children()))]

    top = stages(model)
    if not top:
        picked, previous = [], None
        for m, _ in calls:
            if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
                if previous is not None and names[previous] not in picked:
                    picked.append(names[previous])
                previous = m
            elif not isinstance(m, (nn.Flatten, nn.Unflatten, nn.Dropout, nn.Identity)) and not list(m.children()):
                previous = m
        return tuple(picked)
    layers_last = [m for m, _ in calls if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))][-1:]
    top = [(n, m) for n, m in top if not any(x is layers_last[0] for x in m.modules())] if layers_last else top
    if len(top) == 1:
        blocks = [(n, m) for n, m in top[0][1].named_children() if m in shape_of]
        picked = [names[m] for (n, m), nxt in zip(blocks, blocks[1:] + [(None, None)])
                  if nxt[1] is None or shape_of[nxt[1]][1:] != shape_of[m][1:]]
        return tuple(p for p in picked if p)
    return tuple(names[m] for _, m in top)


# ---------------------------------------------------------------- masks as zeros
def zeroed(graph: Graph, tensors, masks) -> list[torch.Tensor]:
    """``tensors`` (the graph's state tensors) with every slice of a dropped channel set to
    zero: what the network that keeps ``masks`` (per group, (H_g,) bool) computes."""
    out = list(tensors)
    for g, mask in zip(graph.groups, masks):
        if bool(mask.all()):
            continue
        for s in g.slices:
            keep = mask[s.root].to(out[s.tensor].dtype)  # (n,) 1 kept, 0 dropped
            scale = torch.ones(graph.shapes[s.tensor][s.dim], dtype=out[s.tensor].dtype)
            scale[s.index] = keep
            view = [1] * len(graph.shapes[s.tensor])
            view[s.dim] = -1
            out[s.tensor] = out[s.tensor] * scale.view(view)
    return out


def functional_forward(graph: Graph, tensors, x: torch.Tensor, capture=()) -> tuple[torch.Tensor, dict]:
    """The graph's forward on ``x`` with the given state tensors: logits (N, K) and the
    outputs of the modules named in ``capture``."""
    from torch.func import functional_call

    found, hooks = {}, []
    for name in capture:
        module = graph.model.get_submodule(name)
        hooks.append(module.register_forward_hook(lambda m, i, o, name=name: found.setdefault(name, o)))
    try:
        logits = functional_call(graph.model, dict(zip(graph.tensor_names, tensors)), (x,), strict=False)
    finally:
        for h in hooks:
            h.remove()
    return logits, found


def recalibrated(graph: Graph, tensors, masks, x: torch.Tensor, batch: int = 500) -> list[torch.Tensor]:
    """Adaptive BatchNorm for a graph individual: ``tensors`` with every BatchNorm's
    running mean and variance re-estimated for the kept channels (``masks``) on the
    images ``x`` (the network that keeps ``masks``, its BatchNorms normalising by batch
    statistics, a cumulative average over batches of ``batch``; forward only). A
    dropped channel's entries keep their old values (a mask flip may bring it back)."""
    from torch.func import functional_call

    norms = [(name, m) for name, m in graph.model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             and m.track_running_stats]
    if not norms:
        return list(tensors)
    index = {n: i for i, n in enumerate(graph.tensor_names)}
    state = dict(zip(graph.tensor_names, zeroed(graph, tensors, masks)))
    fresh = {}
    for name, m in norms:
        for stat, value in (("running_mean", 0.0), ("running_var", 1.0)):
            fresh[f"{name}.{stat}"] = torch.full_like(state[f"{name}.{stat}"], value)
        fresh[f"{name}.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
    saved = [(m, m.training, m.momentum) for _, m in norms]
    try:
        for m, _, _ in saved:
            m.train()
            m.momentum = None  # a cumulative average over the calibration batches
        with torch.no_grad():
            for i in range(0, len(x), batch):
                functional_call(graph.model, {**state, **fresh}, (x[i:i + batch],), strict=False)
    finally:
        for m, training, momentum in saved:
            m.train(training)
            m.momentum = momentum
    out = list(tensors)
    kept = {}
    for g, mask in zip(graph.groups, masks):
        for s in g.rows:
            kept.setdefault(s.tensor, torch.ones(graph.shapes[s.tensor][0], dtype=torch.bool))[s.index] = mask[s.root]
    for name, _ in norms:
        for stat in ("running_mean", "running_var"):
            k = index[f"{name}.{stat}"]
            keep = kept.get(k, torch.ones(graph.shapes[k][0], dtype=torch.bool))
            out[k] = torch.where(keep, fresh[f"{name}.{stat}"].to(out[k].dtype), out[k])
    return out


def graph_tensors(model: nn.Module, graph: Graph) -> list[torch.Tensor]:
    """``model``'s state tensors in the graph's order, as detached float32 CPU copies."""
    state = dict(model.state_dict(keep_vars=False))
    return [state[n].detach().to("cpu", torch.float32).clone() for n in graph.tensor_names]


def pruned_copy(graph: Graph, tensors, masks) -> tuple[nn.Module, list]:
    """A physically smaller copy of the parent's own class that keeps ``masks``: the
    parent's module with ``tensors`` loaded and each group's dropped channels pruned by
    Torch-Pruning. Returns the module and its pruning history (plain data that
    :func:`replay` applies to a fresh model)."""
    import torch_pruning as tp

    model = copy.deepcopy(graph.model)
    with torch.no_grad():
        state = dict(zip(graph.tensor_names, tensors))
        for name, t in model.state_dict(keep_vars=True).items():
            if name in state:
                t.copy_(state[name])
    x = torch.zeros(1, *graph.input_shape)
    with torch.enable_grad():
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=x, verbose=False)
    for g, mask in zip(graph.groups, masks):
        drop = torch.nonzero(~mask).squeeze(1).tolist()
        if drop:
            root = model.get_submodule(g.name)
            pruner = dg.get_pruner_of_module(root)
            dg.get_pruning_group(root, pruner.prune_out_channels, drop).prune()
    history = [[str(n), bool(out), [int(i) for i in idxs]] for n, out, idxs in dg.pruning_history()]
    return model.eval(), history


def replay(model: nn.Module, history, input_shape) -> nn.Module:
    """Prune a freshly built ``model`` (the parent's class) as ``history`` (from
    :func:`pruned_copy`) says; its state dict then fits the compressed network's."""
    import torch_pruning as tp

    model = model.cpu().eval()
    with torch.enable_grad():
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(1, *input_shape), verbose=False)
    dg.load_pruning_history([list(h) for h in history])
    return model


def check_zeroing_is_pruning(graph: Graph, x: torch.Tensor) -> None:
    """The premise of the masked forward, checked on ``x``: dropping about a third of every
    group's channels by zeroing their slices gives Torch-Pruning's pruned copy's logits."""
    tensors = graph_tensors(graph.model, graph)
    rng = torch.Generator().manual_seed(0)
    masks = []
    for g in graph.groups:
        mask = torch.rand(g.size, generator=rng) > 1 / 3
        mask[int(torch.randint(g.size, (1,), generator=rng))] = True
        masks.append(mask)
    with torch.no_grad():
        masked, _ = functional_forward(graph, zeroed(graph, tensors, masks), x)
        pruned, _ = pruned_copy(graph, tensors, masks)
        reference = pruned(x)
    scale = float(reference.abs().max()) or 1.0
    if not torch.allclose(masked, reference, rtol=CHECK_TOLERANCE, atol=CHECK_TOLERANCE * scale):
        raise ParentError("parent: dropping coupled channels by zeroing their weights does not give the pruned "
                          "network's output (an op whose channels the dependency graph cannot couple); "
                          f"supported: {SUPPORTED}")
