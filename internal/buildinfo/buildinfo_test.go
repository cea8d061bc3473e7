package buildinfo

import (
	"runtime/debug"
	"testing"
)

func TestGet(t *testing.T) {
	vcs := &debug.BuildInfo{GoVersion: "go1.99", Main: debug.Module{Version: "v0.0.0-20261204-abcdef"}, Settings: []debug.BuildSetting{
		{Key: "vcs.revision", Value: "abc123"}, {Key: "vcs.time", Value: "2026-12-04T10:00:00Z"}, {Key: "vcs.modified", Value: "true"},
	}}
	for _, tc := range []struct {
		name                  string
		version, commit, date string
		bi                    *debug.BuildInfo
		want                  Info
	}{
		{"stamped wins", "v1.2.0", "deadbeef", "2026-12-01T00:00:00Z", vcs,
			Info{Version: "v1.2.0", Commit: "deadbeef", Date: "2026-12-01T00:00:00Z", GoVersion: "go1.99"}},
		{"toolchain record", "", "", "", vcs,
			Info{Version: "v0.0.0-20261204-abcdef", Commit: "abc123-dirty", Date: "2026-12-04T10:00:00Z", GoVersion: "go1.99"}},
		{"devel build outside a repository", "", "", "", &debug.BuildInfo{GoVersion: "go1.99", Main: debug.Module{Version: "(devel)"}},
			Info{Version: "devel", Commit: Unknown, Date: Unknown, GoVersion: "go1.99"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := get(tc.version, tc.commit, tc.date, tc.bi); got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
	if got := get("", "", "", nil); got.Version != "devel" || got.GoVersion == "" {
		t.Errorf("without build info: %+v", got)
	}
}
