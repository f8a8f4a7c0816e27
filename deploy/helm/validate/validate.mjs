// Validates custom resources against schemas generated from their CRDs.
// Input: a JSON array of manifests on stdin. Output: one line per invalid manifest, exit 1.
// A kind not listed below is an error, never a silent pass.
import { ScaledObject } from "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject";
import { TriggerAuthentication } from "@kubernetes-models/keda/keda.sh/v1alpha1/TriggerAuthentication";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
import { KafkaTopic as KafkaTopicV1 } from "@kubernetes-models/strimzi-kafka-operator/kafka.strimzi.io/v1/KafkaTopic";
import { KafkaTopic as KafkaTopicV1beta2 } from "@kubernetes-models/strimzi-kafka-operator/kafka.strimzi.io/v1beta2/KafkaTopic";

const MODELS = [
  ScaledObject,
  TriggerAuthentication,
  PrometheusRule,
  ServiceMonitor,
  KafkaTopicV1,
  KafkaTopicV1beta2,
];
const byType = new Map(MODELS.map((model) => [`${model.apiVersion} ${model.kind}`, model]));

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const manifests = JSON.parse(Buffer.concat(chunks).toString("utf8"));

let failures = 0;
for (const manifest of manifests) {
  const type = `${manifest.apiVersion} ${manifest.kind}`;
  const name = `${manifest.kind}/${manifest.metadata?.name}`;
  const Model = byType.get(type);
  if (!Model) {
    console.log(`${name}: no schema for ${type}`);
    failures++;
    continue;
  }
  try {
    new Model(manifest).validate();
  } catch (error) {
    console.log(`${name}: ${error.message}`);
    failures++;
  }
}
process.exit(failures ? 1 : 0);
