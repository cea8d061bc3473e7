// Package buildinfo tells which build of SignalForge is running: its
// version, the commit it was built from, when, and with which Go.
//
// `make build` stamps the version, commit and date at link time:
//
//	go build -ldflags "-X github.com/signalforge/signalforge/internal/buildinfo.version=v1.2.0 \
//	    -X github.com/signalforge/signalforge/internal/buildinfo.commit=$(git rev-parse HEAD) \
//	    -X github.com/signalforge/signalforge/internal/buildinfo.date=$(date -u +%Y-%m-%dT%H:%M:%SZ)" ./cmd/signalforge
//
// A build that was not stamped (go build, go run, go test) falls back to
// what the Go toolchain recorded in the binary: the module version and the
// VCS revision and commit time, when it built from a repository checkout.
//
//	info := buildinfo.Get() // info.Version is what GET /v2 and signalforge_build_info report
package buildinfo

import (
	"runtime"
	"runtime/debug"
)

// Set with -ldflags -X at link time; empty in an unstamped build. They are
// the only package-level variables: the linker can set nothing else.
var (
	version string
	commit  string
	date    string
)

// Unknown is what a field reads when neither the build stamp nor the Go
// toolchain's record has it.
const Unknown = "unknown"

// Info describes the running build.
type Info struct {
	// Version is the release version (e.g. "v1.2.0", or what `git
	// describe` said), else the main module's version, else "devel".
	Version string
	// Commit is the VCS revision, with "-dirty" appended when the work
	// tree had changes, or Unknown.
	Commit string
	// Date is when the commit was made or the binary was built (RFC 3339),
	// or Unknown.
	Date string
	// GoVersion is the Go toolchain that built the binary.
	GoVersion string
}

// Get returns the running build's Info.
func Get() Info {
	bi, _ := debug.ReadBuildInfo()
	return get(version, commit, date, bi)
}

// get fills what the stamp left empty from bi (which may be nil).
func get(version, commit, date string, bi *debug.BuildInfo) Info {
	info := Info{Version: version, Commit: commit, Date: date, GoVersion: runtime.Version()}
	if bi != nil {
		if bi.GoVersion != "" {
			info.GoVersion = bi.GoVersion
		}
		if info.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			info.Version = bi.Main.Version
		}
		var rev, at string
		dirty := false
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.time":
				at = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
		if info.Commit == "" && rev != "" {
			info.Commit = rev
			if dirty {
				info.Commit += "-dirty"
			}
		}
		if info.Date == "" {
			info.Date = at
		}
	}
	if info.Version == "" {
		info.Version = "devel"
	}
	if info.Commit == "" {
		info.Commit = Unknown
	}
	if info.Date == "" {
		info.Date = Unknown
	}
	return info
}
