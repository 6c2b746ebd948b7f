#include "annforge/common.h"

namespace annforge {

Metric parse_metric(const std::string& name) {
  if (name == "l2") return Metric::L2;
  if (name == "ip") return Metric::IP;
  if (name == "cosine") return Metric::Cosine;
  fail(ErrorKind::Value, "unknown metric '", name, "': expected 'l2', 'ip' or 'cosine'");
}

const char* metric_name(Metric m) {
  switch (m) {
    case Metric::L2: return "l2";
    case Metric::IP: return "ip";
    case Metric::Cosine: return "cosine";
  }
  return "unknown";
}

}  // namespace annforge
