"""Write tests/data/model_v0_1*: model directories saved by bafo-pipeline 0.1.0 (commit e7f82a8),
with a fixed input and the outputs that release gives on it. Run once, with THAT release's code."""
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

torch.set_num_threads(1)
from bafo_pipeline import BAFOTransformer, make_synthetic_faces
from bafo_pipeline.io.model_io import save_model

out = Path(sys.argv[1])
faces = make_synthetic_faces(64, image_size=32, random_state=7)
S = faces.sensitive_features
image_model = BAFOTransformer(
    latent_dim=8, widths=(8, 16, 32), epochs=1, batch_size=32, concealment="full", refine_epochs=1,
    decoder_epochs=1, device="cpu", precision="float32", random_state=0,
).fit(faces.images, sensitive_features=S)
save_model(image_model, out / "model_v0_1", metadata={"note": "saved by bafo-pipeline 0.1.0 (e7f82a8)"})
X = faces.images[:6]
values = {"age": 40, "gender": "female"}
Z = image_model.transform(X)
np.savez_compressed(
    out / "model_v0_1" / "expected.npz",
    images=X,
    latents=Z,
    raw_latents=image_model.transform(X, conceal=False),
    decoded=image_model.inverse_transform(Z, sensitive_features=values),
)

rng = np.random.default_rng(0)
table = pd.DataFrame(rng.normal(size=(64, 5)).astype(np.float32), columns=[f"f{i}" for i in range(5)])
tabular_model = BAFOTransformer(
    latent_dim=4, widths=(8,), epochs=1, batch_size=16, concealment="linear", covariance_dims=1, decoder_epochs=1,
    device="cpu", random_state=0,
).fit(table, sensitive_features=S)
save_model(tabular_model, out / "model_v0_1_tabular")
Zt = tabular_model.transform(table.iloc[:6])
np.savez_compressed(
    out / "model_v0_1_tabular" / "expected.npz",
    features=table.iloc[:6].to_numpy(),
    latents=Zt,
    decoded=tabular_model.inverse_transform(Zt, sensitive_features=values),
)
print("ok")
