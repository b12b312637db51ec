package agent

import (
	"strings"
	"testing"
)

// timerList is /proc/timer_list's tick-sched part for two CPUs (6.1).
const timerList = `Timer List Version: v0.9
cpu: 0
 clock 0:
  .base:               ffff8a1e1f41e2c0
  .expires_next   : 2660000000 nsecs
  .idle_calls     : 2
  .idle_sleeptime : 64085 nsecs
  .iowait_sleeptime: 17340065 nsecs
cpu: 1
  .idle_sleeptime : 1000 nsecs
  .iowait_sleeptime: 1 nsecs
`

func TestIdleOf(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     int64
		err      string
	}{
		{"two CPUs", timerList, 64085 + 17340065 + 1000 + 1, ""},
		{"none", "Timer List Version: v0.9\ncpu: 0\n", 0, "no idle_sleeptime"},
		{"garbage", "  .idle_sleeptime : lots nsecs\n", 0, "lots"},
		{"negative", "  .idle_sleeptime : -5 nsecs\n", 0, "-5"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := idleOf([]byte(tc.in))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want one naming %q", err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("idleOf = %d, %v; want %d", got, err, tc.want)
			}
		})
	}
}
