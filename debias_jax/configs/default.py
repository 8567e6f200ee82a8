"""Default config: a small ADM UNet on an embedded offline dataset, a meaningful run in minutes on 2 CPU cores.

Every other config imports `get_config` from here and overrides what differs, so this file names every field.
Choose the weighting and the target by override, e.g. `--config.loss.weighting=constant --config.loss.target=v`.
"""

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.allow_config_change = False  # True: resume/sample a checkpoint with another model/diffusion/loss/data
                                      # config (e.g. fine-tuning with another weighting); recorded in the workdir

  config.data = data = ml_collections.ConfigDict()
  data.source = "embedded"        # embedded | tfds | folder
  data.name = "digits"            # embedded: digits | photo_patches | gmm; tfds: a dataset name; folder: unused
  data.split = "train"
  data.data_dir = ""              # tfds data_dir ("" = tfds's default: $TFDS_DATA_DIR or ~/tensorflow_datasets),
                                  # or the image folder
  data.tfds_prepare = False       # tfds: download and prepare a missing dataset (process 0; the others wait)
  data.image_size = 16
  data.channels = 1
  data.num_classes = 0            # > 0: labels are fed to a class-conditional model
  data.random_flip = False        # digits are not symmetric
  data.digits_upsample = "bilinear"  # digits at 16 px: bilinear | nearest | pad
  data.gmm_components = 8         # gmm: the exactly known mixture of the bias benchmark
  data.gmm_rank = 6
  data.gmm_noise_std = 0.05
  data.gmm_seed = 0
  data.gmm_num_train = 20_000
  data.gmm_num_test = 10_000
  data.tfds_access = "auto"       # auto | random_access (array_record) | in_memory
  data.tfds_max_in_memory_gb = 8.0
  data.image_key = "image"
  data.label_key = "label"
  data.num_workers = 0            # image-folder decode threads (0 = min(16, CPUs))

  config.model = model = ml_collections.ConfigDict()
  model.model_channels = 32
  model.channel_mult = ()         # () = ADM's choice for the image size
  model.num_res_blocks = 1
  model.attention_resolutions = (8,)
  model.num_heads = 1
  model.num_head_channels = -1    # > 0 overrides num_heads with channels // num_head_channels
  model.use_scale_shift_norm = True
  model.resblock_updown = True
  model.dropout = 0.0
  model.learn_sigma = True
  model.dtype = "float32"         # compute dtype; params stay float32 ("bfloat16" for TPU/GPU)
  model.remat = False             # gradient checkpointing of UNet blocks
  model.use_new_attention_order = False  # qkv layout: ADM QKVAttention (True) or QKVAttentionLegacy (False)

  config.diffusion = diffusion = ml_collections.ConfigDict()
  diffusion.schedule = "linear"   # linear | cosine
  diffusion.num_timesteps = 1000

  config.loss = loss = ml_collections.ConfigDict()
  loss.target = "eps"             # eps | x0 | v
  loss.weighting = "debias"       # constant | debias | snr | p2 | min_snr
  loss.p2_k = 1.0
  loss.p2_gamma = 1.0
  loss.min_snr_gamma = 5.0
  loss.snr_clamp = 0.0            # > 0: weights see SNR clipped to [1/clamp, clamp]
  loss.normalize_weights = False  # scale eps-space weights to mean 1 over t (the authors did not)
  loss.t_sampling = "uniform"     # uniform | importance: t drawn in proportion to the eps-space weight and the
                                  # loss divided by T q(t), the same objective with another gradient variance

  config.optim = optim = ml_collections.ConfigDict()
  optim.learning_rate = 5e-4
  optim.weight_decay = 0.0
  optim.b1 = 0.9
  optim.b2 = 0.999
  optim.eps = 1e-8
  optim.warmup_steps = 0
  optim.grad_clip_norm = 0.0      # > 0: clip the global gradient norm

  config.ema_rates = (0.995,)     # the first rate's params are used for sampling and evaluation (0.995: a
                                  # 1000-step run; the paper's 0.9999 suits 100k+ steps)

  config.train = train = ml_collections.ConfigDict()
  train.batch_size = 32           # global, over all devices and hosts
  train.num_steps = 1000
  train.steps_per_call = 1        # > 1: several steps per jitted call (lax.scan), for small models
  train.log_every = 100
  train.sample_every = 500
  train.checkpoint_every = 500
  train.keep_checkpoints = 3

  config.sampling = sampling = ml_collections.ConfigDict()
  sampling.sampler = "ddpm"       # ddpm | ddim | dpm_solver++ | dpm_solver | unipc ...
  sampling.steps = "100"          # an int or a respacing string ("100", "ddim50", "10,15,20"); DDPM on 100
                                  # respaced steps with the learned variances is how the authors sampled
  sampling.clip_x0 = True
  sampling.eta = 0.0
  sampling.num_samples = 64
  sampling.batch_size = 64
  sampling.use_ema = True
  sampling.solver_options = {}    # extra options of dpm_solver/unipc, e.g. {"order": 3, "skip_type": "logSNR"}
  sampling.checkpoint_step = -1   # --mode sample: the checkpoint to sample (-1 = the latest)
  sampling.labels = ()            # --mode sample, conditional models: class labels repeated (() = all in turn)
  sampling.output_dir = ""        # --mode sample: "" = WORKDIR/samples

  config.eval = ev = ml_collections.ConfigDict()
  ev.feature_space = "auto"       # auto | inception | standin | pixels (auto: standin for digits/photo_patches,
                                  # pixels for gmm, inception for tfds and folders)
  ev.inception_weights = ""       # FID Inception-v3 weights pickle (jax-fid format); never downloaded
  ev.cache_dir = ""               # "" = ~/.cache/debias_jax (stand-in network, reference statistics)
  ev.batch_size = 256             # feature-extraction batch
  ev.num_samples = 1000           # samples generated per evaluation (the paper: 10_000)
  ev.num_reference = 0            # reference examples from the data; 0 = the whole split
  ev.reference_npz = ""           # an ADM reference batch instead of the data pipeline
  ev.pr_k = 3
  ev.checkpoint_steps = ()        # --mode eval: checkpoints to evaluate (() = every one in the workdir)
  ev.sampler_steps = ()           # --mode eval: ("ddim:50", "ddpm:100", ...); () = sampling.sampler:sampling.steps

  config.analysis = analysis = ml_collections.ConfigDict()   # --mode analyze: the paper's study of the bias
  analysis.checkpoint_step = -1   # -1 = the latest
  analysis.num_examples = 1024    # data examples for the per-t errors (each seen once in every t bucket)
  analysis.num_buckets = 10
  analysis.bucket_by = "t"        # t (equal ranges of timesteps) | log_snr (equal ranges of log SNR)
  analysis.batch_size = 256       # global, a multiple of the device count
  analysis.samplers = ("ddim",)   # colour/mean shift of samples against the number of steps, per sampler
  analysis.sampling_steps = (2, 3, 5, 10, 20, 50)  # add 100, 1000 (the paper's range) off CPU
  analysis.num_samples = 256      # samples per (sampler, steps), and x_T draws for the first-step prediction
  return config
