package registry

import (
	"maps"
	"strings"
)

// Metadata keys in an ONNX model's metadata_props from which Register
// fills a version's lineage. SignalForge's converter and quantizer write
// them (convert.MetaSourceSHA256, convert.MetaConvertPrefix,
// quantize.MetaPrefix; a test keeps the names in step without the
// registry importing those packages).
const (
	// MetaSourceSHA256 holds the hex sha256 of the converted checkpoint.
	MetaSourceSHA256 = "signalforge.source_sha256"
	// MetaConvertPrefix starts the conversion parameters
	// ("signalforge.convert.opset").
	MetaConvertPrefix = "signalforge.convert."
	// MetaQuantizePrefix starts the quantization parameters
	// ("signalforge.quantize.mode"), among them "parent" and
	// "calibration_sha256".
	MetaQuantizePrefix = "signalforge.quantize."
)

// LineageFromMetadata returns the lineage an artifact records about itself
// in its metadata_props (ModelInfo.Metadata):
//
//   - SourceSHA256 from MetaSourceSHA256;
//   - Conversion from every MetaConvertPrefix key, the prefix removed;
//   - Quantization from every MetaQuantizePrefix key, the prefix removed
//     (the same map as quantize.Result.Params);
//   - CalibrationSHA256 from MetaQuantizePrefix+"calibration_sha256";
//   - Parent from MetaQuantizePrefix+"parent", as written ("v1" or
//     "name:v1"); Register keeps it only if it names a version of the
//     model being registered (see RegisterRequest.Lineage).
//
// SourceCheckpoint and Benchmarks are never in metadata. Values are
// returned as found; Register validates them.
func LineageFromMetadata(md map[string]string) Lineage {
	var l Lineage
	l.SourceSHA256 = md[MetaSourceSHA256]
	for k, v := range md {
		if p, ok := strings.CutPrefix(k, MetaConvertPrefix); ok && p != "" {
			if l.Conversion == nil {
				l.Conversion = map[string]string{}
			}
			l.Conversion[p] = v
		}
		if p, ok := strings.CutPrefix(k, MetaQuantizePrefix); ok && p != "" {
			if l.Quantization == nil {
				l.Quantization = map[string]string{}
			}
			l.Quantization[p] = v
		}
	}
	l.CalibrationSHA256 = l.Quantization["calibration_sha256"]
	l.Parent = l.Quantization["parent"]
	return l
}

// mergeLineage fills what the request left empty from the artifact's
// lineage: string fields when empty, map fields key by key (the request's
// keys win). Parent is not merged here: it depends on the model's
// versions, which only Register's update sees (see metadataParent).
func mergeLineage(req, art Lineage) Lineage {
	out := req.clone()
	if out.SourceSHA256 == "" {
		out.SourceSHA256 = art.SourceSHA256
	}
	if out.CalibrationSHA256 == "" {
		out.CalibrationSHA256 = art.CalibrationSHA256
	}
	out.Conversion = mergeMap(out.Conversion, art.Conversion)
	out.Quantization = mergeMap(out.Quantization, art.Quantization)
	return out
}

func mergeMap(explicit, found map[string]string) map[string]string {
	if len(found) == 0 {
		return explicit
	}
	out := maps.Clone(found)
	maps.Copy(out, explicit)
	return out
}

// metadataParent turns the parent an artifact records ("v1", or
// "name:v1" as `signalforge quantize -parent` writes it) into a version of
// model m, or "" if it names another model or a version m does not have.
// Unlike a parent given in the request, which must exist, a recorded one
// that does not fit is dropped (it stays in Lineage.Quantization["parent"]):
// the artifact may be registered under another name than it was made for.
func metadataParent(m *Model, recorded string) string {
	v := recorded
	if name, ver, ok := strings.Cut(recorded, ":"); ok {
		if name != m.Name {
			return ""
		}
		v = ver
	}
	if ValidateName(v) != nil || m.version(v) == nil {
		return ""
	}
	return v
}
