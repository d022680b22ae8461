# SegMAN-T on Cityscapes, 1024×1024 crops, sliding-window test, total batch 8 (4 GPUs × 2).
# The original config says num_classes=150 here; Cityscapes has 19 classes, so we use 19
# (a released T-Cityscapes checkpoint with a 150-way conv_seg needs num_classes=150 to load).
_base_ = [
    '../../_base_/models/segman.py', '../../_base_/datasets/cityscapes_1024x1024_repeat.py',
    '../../_base_/default_runtime.py', '../../_base_/schedules/schedule_160k_adamw.py'
]
model = dict(
    backbone=dict(type='SegMANEncoder_t', pretrained='../pretrained/SegMAN_Encoder_t.pth.tar', drop_path_rate=0.0),
    decode_head=dict(in_channels=[32, 64, 144, 192], channels=128, feat_proj_dim=192, num_classes=19),
    test_cfg=dict(mode='slide', crop_size=(1024, 1024), stride=(768, 768)))
data = dict(samples_per_gpu=2, workers_per_gpu=2)
evaluation = dict(interval=4000)
