# SegMAN encoder + MMSC decoder (docs/model.md §2-5).  Leaf configs set the variant, widths and classes.
# `custom_imports` registers the SegMAN types with mmseg, so tools/train.py needs no edits.
custom_imports = dict(imports=['segman_mmseg'], allow_failed_imports=False)
norm_cfg = dict(type='SyncBN', requires_grad=True)  # becomes BN outside distributed runs (tools/train.py)
model = dict(
    type='EncoderDecoder',
    backbone=dict(type='SegMANEncoder_t', pretrained=None, drop_path_rate=0.0),
    decode_head=dict(
        type='SegMANDecoder',
        in_channels=[32, 64, 144, 192],
        in_index=[0, 1, 2, 3],
        channels=128,
        feat_proj_dim=192,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))
