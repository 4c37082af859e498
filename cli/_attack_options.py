"""Options of the commands that run the reconstruction attack (``attack``, ``profile``, ``federated attack``).

Apart from :mod:`dpaudit.cli._common` because their choices are the attack library's own names: a command that
does not attack (``bounds``, ``calibrate``, ``mia bound``) then loads no attack code.
"""

from __future__ import annotations

from typing import Annotated

import typer

from dpaudit.attacks.decoders import DECODER_CHOICES, DENOISERS
from dpaudit.attacks.scenario import CONNECTIONS
from dpaudit.cli._common import choices

Decoder = choices("Decoder", DECODER_CHOICES)
Connection = choices("Connection", CONNECTIONS)
Denoiser = choices("Denoiser", DENOISERS)

DecoderOpt = Annotated[Decoder, typer.Option("--decoder", help="strong (dpaudit's), paper (the seed paper's "
                                             "breaching decoder), all (both: the strongest is reported and named), "
                                             "or paper-all (the paper decoder's every candidate row, a diagnostic).")]
ConnectionOpt = Annotated[Connection, typer.Option("--connection", help="How the imprint block joins the network.")]
BinsOpt = Annotated[int, typer.Option("--bins", help="Rows K of the imprint block (10 in the paper).")]
ObservationsOpt = Annotated[int, typer.Option("--observations", help="Times the attacker observes each image "
                                              "(averages the noise to sigma / sqrt(T)).")]
DenoiserOpt = Annotated[Denoiser, typer.Option("--denoiser", help="The strong decoder's denoiser: tv (total "
                                               "variation at the known noise level) or none.")]
