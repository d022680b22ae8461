# SegMAN-T on ADE20K, 512×512 crops, 160k iterations, total batch 16 (4 GPUs × 4).
_base_ = [
    '../../_base_/models/segman.py', '../../_base_/datasets/ade20k_repeat.py',
    '../../_base_/default_runtime.py', '../../_base_/schedules/schedule_160k_adamw.py'
]
model = dict(
    backbone=dict(type='SegMANEncoder_t', pretrained='../pretrained/SegMAN_Encoder_t.pth.tar', drop_path_rate=0.0),
    decode_head=dict(in_channels=[32, 64, 144, 192], channels=128, feat_proj_dim=192, num_classes=150))
data = dict(samples_per_gpu=4, workers_per_gpu=4)
evaluation = dict(interval=4000, save_best='mIoU')
