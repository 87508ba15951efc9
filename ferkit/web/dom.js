// Small DOM helpers the page's views share (app.js, photo.js, video.js).

// An element with properties and children; strings go in as text, never as markup: class names come from model
// files, file names from the user's disk, job fields from the server (none of them may run script here).
export function el(tag, properties = {}, ...children) {
  const node = Object.assign(document.createElement(tag), properties);
  node.append(...children.map((child) => (child instanceof Node ? child : String(child))));
  return node;
}

export function download(blob, name) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = name;
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

export const jsonBlob = (value) => new Blob([JSON.stringify(value, null, 2)], { type: "application/json" });
