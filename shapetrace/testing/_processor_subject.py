"""A diffusers ``Attention`` layer running the processor under test, as a check subject.

The invariants speak in tokens (B, N, C); the subject turns them into what the layer's
configuration takes (a (B, C, H, W) map, no ``encoder_hidden_states`` for self-attention, a
``temb`` for the spatial norm, an additive mask) and the output back into tokens. Its oracle
is the same layer and weights on diffusers' reference processor.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from shapetrace.testing._configurations import TEMB_CHANNELS, Configuration
from shapetrace.testing._gradients import Gradients, requiring_grad, with_gradients
from shapetrace.testing._module_subject import factory_label
from shapetrace.testing._subject import AttentionSubject, seed_parameters, violation
from shapetrace.testing._violation import InvariantViolation, ModuleContractError, OracleError
from shapetrace.testing.strategies import AttentionShapes, random_tensor

__all__ = ["MASKED_SCORE", "ProcessorSubject", "grid"]

MASKED_SCORE = -10000.0
"""What a masked key adds to its scores in diffusers' convention (the UNet turns a boolean
``encoder_attention_mask`` into ``(1 - mask) * -10000.0``)."""


@contextlib.contextmanager
def oracle_failures(subject: ProcessorSubject) -> Iterator[None]:
    """Turn the oracle's own failure into an OracleError: never blamed on the subject."""
    try:
        yield
    except (InvariantViolation, OracleError):
        raise
    except Exception as err:
        raise OracleError(
            f"the oracle (diffusers' reference processor in float64) failed on "
            f"{subject.configuration.describe(subject.shapes)} with {subject.shapes.describe()}: "
            f"{type(err).__name__}: {err}; leave this configuration out with configurations=..."
        ) from err


def grid(tokens: int) -> tuple[int, int]:
    """(h, w) with h * w = tokens, h the largest divisor not above sqrt(tokens): 77 -> (7, 11)."""
    h = max(d for d in range(1, int(tokens**0.5) + 1) if tokens % d == 0)
    return h, tokens // h


class ProcessorSubject(AttentionSubject):
    """``Attention`` on one configuration, running the processor under test."""

    oracle = "diffusers' reference processor on the same layer and weights, in float64"

    def __init__(
        self,
        module: nn.Module,
        shapes: AttentionShapes,
        *,
        device: str,
        dtype: torch.dtype,
        label: str,
        configuration: Configuration,
        qkv_bias: bool,
    ) -> None:
        super().__init__(
            module, shapes, device=device, dtype=dtype, label=label, configuration=configuration
        )
        self.qkv_bias = qkv_bias
        self._oracles: dict[torch.dtype, nn.Module] = {}
        self.grid = grid(shapes.query_tokens)
        self.dropped = self.dropped_arguments()

    @property
    def masks(self) -> bool:
        return self.configuration.masks

    def describe(self) -> str:
        return (
            f"{self.label} on {self.configuration.describe(self.shapes)} "
            f"(device={self.device}, dtype={self.dtype})"
        )

    def call_text(self, x: Tensor) -> str:
        c, s = self.configuration, self.shapes
        b, n, ch = x.shape
        hidden = (b, ch, *self.grid) if c.spatial_input else (b, n, ch)
        parts = [f"hidden_states {hidden}"]
        if not c.self_attention:
            parts.append(f"encoder_hidden_states ({b}, {s.context_tokens}, {s.context_dim})")
        if c.spatial_norm:
            parts.append("temb")
        return f"Attention({', '.join(parts)})"

    def key_projections(self) -> tuple[str, ...]:
        c = self.configuration
        if c.added_kv:
            return ("add_k_proj",) if c.only_cross else ("add_k_proj", "to_k")
        return ("to_k",)

    # -- running ---------------------------------------------------------------------------
    def temb(self, dtype: torch.dtype, batch: int) -> Tensor:
        """The spatial norm's seeded conditioning map at half the grid (it is upsampled), the
        same for every batch row (so a row run alone gets its own)."""
        h, w = self.grid
        shape = (1, TEMB_CHANNELS, (h + 1) // 2, (w + 1) // 2)
        one = random_tensor(shape, seed=self.shapes.seed + 31, dtype=dtype, device=self.device)
        return one.expand(batch, -1, -1, -1).contiguous()

    def _layer_args(
        self, x: Tensor, context: Tensor, mask: Tensor | None, dtype: torch.dtype
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Tokens x (B, N, C) as the layer takes them, and its keyword arguments."""
        c = self.configuration
        hidden = x
        if c.spatial_input:
            b, _, ch = x.shape
            hidden = x.transpose(1, 2).reshape(b, ch, *self.grid)  # (B, C, H, W)
        kwargs: dict[str, Tensor] = {}
        if not c.self_attention:
            kwargs["encoder_hidden_states"] = context
        if mask is not None:
            bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
            kwargs["attention_mask"] = bias.masked_fill(~mask, MASKED_SCORE)[:, None, :]
        if c.spatial_norm:
            kwargs["temb"] = self.temb(dtype, x.shape[0])
        return hidden, kwargs

    def _tokens(self, output: Any, x: Tensor) -> Any:
        """The layer's output as tokens (B, N, C); a wrong 4-D shape is an output_shape miss."""
        if not (self.configuration.spatial_input and isinstance(output, Tensor)):
            return output
        b, n, ch = x.shape
        expected = (b, ch, *self.grid)
        if tuple(output.shape) != expected:
            raise violation(
                "output_shape",
                self,
                f"{self.call_text(x)} returned shape "
                f"{tuple(output.shape)}, expected the input's {expected}",
            )
        return output.reshape(b, ch, n).transpose(1, 2)

    def _forward(
        self,
        layer: nn.Module,
        x: Tensor,
        context: Tensor,
        mask: Tensor | None,
        temb: Tensor | None = None,
    ) -> Any:
        hidden, kwargs = self._layer_args(x, context, mask, x.dtype)
        if temb is not None:
            kwargs["temb"] = temb
        if layer is self.module:
            for name in self.dropped:  # Attention would drop them, with a warning each call
                kwargs.pop(name, None)
        return self._tokens(layer(hidden, **kwargs), x)

    def call(self, x: Tensor, context: Tensor, mask: Tensor | None) -> Any:
        return self._forward(self.module, x, context, mask)

    # -- the oracle ------------------------------------------------------------------------
    def _oracle(self, dtype: torch.dtype) -> nn.Module:
        """The same configuration on the reference processor, holding the subject's weights."""
        if dtype not in self._oracles:
            # upcasting is a precision measure, no change to the math: the float64 oracle
            # runs without it (diffusers' upcast would cast it down to float32)
            exact = replace(self.configuration, upcast=False)
            layer = exact.build(self.shapes, None, qkv_bias=self.qkv_bias)
            self._oracles[dtype] = layer.to(device=self.device, dtype=dtype)
        oracle = self._oracles[dtype]
        state = {
            k: v for k, v in self.module.state_dict().items() if not k.startswith("processor.")
        }
        oracle.load_state_dict(state)
        return oracle

    def reference(
        self,
        x: Tensor,
        context: Tensor,
        mask: Tensor | None = None,
        *,
        dtype: torch.dtype = torch.float64,
    ) -> Tensor:
        """The output of the same layer and weights on diffusers' reference processor."""
        with torch.no_grad(), oracle_failures(self):
            out: Tensor = self._forward(self._oracle(dtype), x.to(dtype), context.to(dtype), mask)
        return out

    def _parameters(self, layer: nn.Module) -> dict[str, Tensor]:
        return {n: p for n, p in layer.named_parameters() if not n.startswith("processor.")}

    def _with_gradients(
        self, layer: nn.Module, x: Tensor, context: Tensor, cotangent: Tensor, mask: Tensor | None
    ) -> tuple[Tensor, Gradients]:
        inputs = {"x": x}
        if not self.configuration.self_attention:
            inputs["context"] = context
        if self.configuration.spatial_norm:
            inputs["temb"] = self.temb(x.dtype, x.shape[0])
        params = self._parameters(layer)

        def forward(t: dict[str, Tensor]) -> Tensor:
            out: Tensor = self._forward(
                layer, t["x"], t.get("context", context), mask, t.get("temb")
            )
            return out

        with requiring_grad(params):
            return with_gradients(forward, inputs, dict(params), cotangent)

    def gradients(
        self, x: Tensor, context: Tensor, cotangent: Tensor, mask: Tensor | None = None
    ) -> tuple[Tensor, Gradients]:
        """The output with autograd on and the gradients to the inputs and every parameter."""
        return self._with_gradients(self.module, x, context, cotangent, mask)

    def reference_gradients(
        self,
        x: Tensor,
        context: Tensor,
        cotangent: Tensor,
        mask: Tensor | None = None,
        *,
        dtype: torch.dtype = torch.float64,
    ) -> tuple[Tensor, Gradients]:
        """The same from the oracle in ``dtype``."""
        with oracle_failures(self):
            oracle = self._oracle(dtype)
            x, context, cotangent = x.to(dtype), context.to(dtype), cotangent.to(dtype)
            return self._with_gradients(oracle, x, context, cotangent, mask)

    def agreement_hint(self) -> str:
        dropped = self.dropped
        if not dropped:
            return ""
        return (
            f"; the processor's __call__ takes no {', '.join(dropped)}, so Attention "
            f"dropped it: configuration {self.configuration.name!r} needs it"
        )

    def dropped_arguments(self) -> list[str]:
        """Arguments this configuration passes that the processor's ``__call__`` does not take
        (``Attention`` drops them with a warning)."""
        passed = ["temb"] if self.configuration.spatial_norm else []
        processor = getattr(self.module, "processor", None)
        if not callable(processor):
            return []
        try:
            params = inspect.signature(processor).parameters
        except (TypeError, ValueError):
            return []
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return []
        return [name for name in passed if name not in params]

    @classmethod
    def build(
        cls,
        processor_factory: Callable[[], Any],
        shapes: AttentionShapes,
        *,
        device: str,
        dtype: torch.dtype,
        reinitialize: bool,
        configuration: Configuration,
    ) -> ProcessorSubject:
        """A seeded ``Attention`` of ``configuration`` for ``shapes`` with the processor set;
        q/k/v biases on odd seeds (SD has none, other models do)."""
        label = factory_label(processor_factory)
        shapes = configuration.adapt(shapes)
        qkv_bias = shapes.seed % 2 == 1
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(shapes.seed)  # CPU only: cheap
            processor = processor_factory()
            if processor is None:
                raise ModuleContractError(
                    f"processor_factory {label}() returned None: return a processor, e.g. "
                    "lambda: MyProcessor() (diffusers would silently use its own default)"
                )
            module = configuration.build(shapes, processor, qkv_bias=qkv_bias)
        if reinitialize:
            seed_parameters(module, shapes.seed)
        module.to(device=device, dtype=dtype).eval()
        return cls(
            module,
            shapes,
            device=device,
            dtype=dtype,
            label=f"{label}()",
            configuration=configuration,
            qkv_bias=qkv_bias,
        )
