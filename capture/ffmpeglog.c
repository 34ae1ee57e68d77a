// FFmpeg's log lines, handed to Go (see ffmpeglog.go).
#include <stdarg.h>

#include <libavutil/log.h>

#include "_cgo_export.h"

static void tfy_ffmpeg_log(void *avcl, int level, const char *fmt, va_list vl) {
	char line[512];
	int print_prefix = 1;
	if (level > av_log_get_level()) {
		return;
	}
	av_log_format_line2(avcl, level, fmt, vl, line, sizeof line, &print_prefix);
	ffmpegLogLine(level, line);
}

void tfy_route_ffmpeg_log(void) { av_log_set_callback(tfy_ffmpeg_log); }
