"""ffmpeg for the web demo: the sound of an upload as a wav file, and overlay videos with sound.

ffmpeg is the binary bundled in the imageio-ffmpeg wheel (the ``[app]`` extra), or the one of
Debian's ``ffmpeg`` package (``IMAGEIO_FFMPEG_EXE=/usr/bin/ffmpeg``, also found on PATH when
the wheel has no binary for the platform): nothing is downloaded at run time.
"""
import os
import subprocess

import numpy as np
import soundfile as sf

from selm_d2.utils import atomic_path

# A run that takes longer than this is stuck (a 10 s clip takes well under a second).
FFMPEG_TIMEOUT_S = 120


class UploadError(ValueError):
    """An uploaded file the demo cannot use; the message names the file and what to upload."""


def ffmpeg_exe():
    """The ffmpeg binary: IMAGEIO_FFMPEG_EXE, else the wheel's own, else ffmpeg on PATH."""
    try:
        import imageio_ffmpeg
    except ImportError as e:
        raise RuntimeError("the web demo needs ffmpeg: pip install -e '.[app]' (imageio-ffmpeg "
                           "bundles it)") from e
    return imageio_ffmpeg.get_ffmpeg_exe()


def _ffmpeg(args, stdin=None):
    """Run ffmpeg quietly, feeding it `stdin` (bytes) or nothing; returns (exit code, its errors)."""
    cmd = [ffmpeg_exe(), "-y", "-v", "error"] + (["-nostdin"] if stdin is None else []) + args
    run = subprocess.run(cmd, input=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         timeout=FFMPEG_TIMEOUT_S)
    return run.returncode, run.stderr.decode(errors="replace").strip()


def extract_audio(path, wav_path, seconds):
    """The first sound track of a video or audio file, as a float wav of at most `seconds` s.

    The channels and sample rate stay as they are: the audio front-end mixes and resamples
    them exactly as it does for dataset files.

    Returns:
        the duration of the wav in seconds.
    Raises:
        UploadError: the file has no sound track or ffmpeg cannot read it.
    """
    name = os.path.basename(path)
    code, err = _ffmpeg(["-i", path, "-map", "0:a:0", "-t", str(seconds), "-c:a", "pcm_f32le", wav_path])
    if code != 0:
        if "matches no streams" in err:
            raise UploadError("{} has no audio track. SelM segments what sounds, so it needs the clip's "
                              "sound: upload a video with sound, or its frames plus a wav/flac file."
                              .format(name))
        last = err.splitlines()[-1] if err else "exit code {}".format(code)
        raise UploadError("Cannot read {} as video or audio ({}). Upload an mp4/webm/avi video or a "
                          "wav/flac file.".format(name, last))
    return sf.info(wav_path).duration


def encode_video(frames_rgb, path, audio=None, fps=1.0):
    """Encode RGB frames [H, W, 3] as a browser-playable MP4 (H.264, AAC), atomically.

    Args:
        audio: a sound file muxed in, cut to the video's length; None: a silent video.
        fps: frames per second (the demo shows one frame per second of sound).
    """
    height, width = frames_rgb[0].shape[:2]
    args = ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "{}x{}".format(width, height),
            "-framerate", str(fps), "-i", "-"]
    if audio is not None:
        args += ["-i", audio, "-map", "0:v", "-map", "1:a", "-c:a", "aac"]
    # yuv420p (what browsers decode) needs even sides: pad by one pixel where odd.
    args += ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2",
             "-t", str(len(frames_rgb) / fps), "-movflags", "+faststart", "-f", "mp4"]
    with atomic_path(path) as tmp:
        code, err = _ffmpeg(args + [tmp],
                            stdin=np.ascontiguousarray(np.stack(frames_rgb), dtype=np.uint8).tobytes())
        if code != 0:
            raise RuntimeError("ffmpeg could not encode {}: {}".format(path, err))
    return path
