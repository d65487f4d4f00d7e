// Model URIs as the panel shows them, and the desired state's model sources (spec 7.2):
//   https://huggingface.co/<owner>/<repo>/(blob|resolve)/<revision>/<file…>  -> {"HuggingFace": {...}}
//   agent:///path                                                         -> {"LocalToAgent": "/path"}
//   any other http(s) URL                                                 -> {"Url": {"url"}}
//   empty                                                                 -> "None"
const HUGGING_FACE = /^https:\/\/huggingface\.co\/([^/]+)\/([^/]+)\/(?:blob|resolve)\/([^/]+)\/(.+)$/;

export function parseModelUri(text) {
  const uri = text.trim();
  if (!uri) return "None";
  const huggingFace = uri.match(HUGGING_FACE);
  if (huggingFace) {
    const [, owner, repo, revision, filename] = huggingFace;
    return { HuggingFace: { repo_id: `${owner}/${repo}`, filename, revision } };
  }
  if (uri.startsWith("agent://")) {
    const path = uri.slice("agent://".length);
    if (!path.startsWith("/")) throw new Error("an agent:// URI needs an absolute path, like agent:///models/model.gguf");
    return { LocalToAgent: path };
  }
  let url;
  try { url = new URL(uri); } catch (_) { url = null; }
  if (url && (url.protocol === "http:" || url.protocol === "https:")) return { Url: { url: uri } };
  throw new Error("use a Hugging Face file URL, agent:///path/on/the/agent.gguf, or an http(s) URL");
}

export function formatModelSource(source) {
  if (source === "None" || !source) return "";
  if (source.HuggingFace) {
    const { repo_id, revision, filename } = source.HuggingFace;
    return `https://huggingface.co/${repo_id}/blob/${revision}/${filename}`;
  }
  if (source.LocalToAgent !== undefined) return `agent://${source.LocalToAgent}`;
  if (source.Url) return source.Url.url;
  return "";
}
